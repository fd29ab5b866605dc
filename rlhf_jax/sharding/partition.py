"""Shardings derived from logical axis names, and initialisation directly into them.

State is created as `jax.eval_shape(init) -> shardings -> jax.jit(init, out_shardings=...)`, so no
large array ever exists unsharded on one device. Parameters are returned UNBOXED (plain pytrees);
the logical metadata lives only in the sharding tree computed here.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlhf_jax.sharding.rules import LogicalRules


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_spec(ndim: int) -> P:
  """Leading (batch) dimension over every data-parallel axis; the rest replicated."""
  return P(("data", "fsdp"), *([None] * (ndim - 1)))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(ndim))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def _check_divisible(path, leaf, sharding: NamedSharding) -> None:
  spec = sharding.spec
  for dim, axes in enumerate(spec):
    if axes is None:
      continue
    axes = axes if isinstance(axes, tuple) else (axes,)
    size = math.prod(sharding.mesh.shape[a] for a in axes)
    if leaf.shape[dim] % size:
      raise ValueError(
          f"parameter {jax.tree_util.keystr(path)} of shape {leaf.shape}: dimension {dim} "
          f"({leaf.shape[dim]}) is not divisible by mesh axes {axes} of size {size}; change the mesh "
          f"or the sharding rules")


def logical_shardings(abstract_boxed: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings (same structure as the UNBOXED tree) for a tree with nn.Partitioned leaves."""
  specs = nn.get_partition_spec(abstract_boxed)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  unboxed = nn.unbox(abstract_boxed)
  jax.tree_util.tree_map_with_path(_check_divisible, unboxed, shardings)
  return shardings


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, rules: LogicalRules, *args) -> tuple[Any, Any]:
  """Initialises `init_fn(*args)` (which returns a boxed tree) directly into its shardings.

  Returns:
    (params, shardings): params a plain pytree of sharded jax.Arrays.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = logical_shardings(abstract, mesh, rules)
  params = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return params, shardings


def opt_state_shardings(tx: optax.GradientTransformation, params_abstract: Any, param_shardings: Any,
                        mesh: Mesh) -> Any:
  """Optimiser-state shardings mirroring the parameters; scalars (e.g. Adam's count) replicated."""
  state_abstract = jax.eval_shape(tx.init, params_abstract)
  return optax.tree_map_params(tx, lambda _, s: s, state_abstract, param_shardings,
                               transform_non_params=lambda _: replicated(mesh))


def put_batch(batch: Any, mesh: Mesh) -> Any:
  """Host NumPy batch -> global jax.Arrays with the leading dim sharded over data axes.

  With several processes each host passes its own rows (process-local data).
  """
  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, max(x.ndim, 1)) if x.ndim else replicated(mesh)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:] if x.ndim else ()
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return jax.tree.map(put, batch)
