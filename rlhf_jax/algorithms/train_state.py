"""Train state of one trained network, created directly sharded, and the generic gradient step.

One `TrainState` per trained network (policy, value model, reward model): parameters, optimiser
state and the step counter, nothing else. The optimiser `tx` is not stored inside; it is bound
into step functions with `functools.partial`, so the state is a plain pytree of arrays that Orbax
can save and `jax.jit` can donate. Frozen networks (reference policy, reward model during PPO) are
plain parameter pytrees created with `sharding.init_sharded` and never wrapped in a TrainState.

Creation goes `jax.eval_shape(init) -> logical shardings -> jax.jit(init, out_shardings=...)`, so no
full unsharded copy of the parameters or the optimiser state ever exists on one device.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlhf_jax import sharding
from rlhf_jax.algorithms import optimizer as optimizer_lib

PyTree = Any
# optax.tree.norm superseded optax.global_norm (deprecated) in optax 0.2.6.
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


@flax.struct.dataclass
class TrainState:
  """Parameters, optimiser state and the number of optimiser updates applied so far."""

  step: jax.Array  # int32 scalar
  params: PyTree  # plain (unboxed) pytree of float32 master parameters
  opt_state: optax.OptState


def _state_shardings(init_fn: Callable[..., Any], tx: optax.GradientTransformation, mesh: Mesh,
                     rules: sharding.LogicalRules, *init_args) -> tuple[TrainState, TrainState]:
  """(abstract unsharded state, state shardings) from the boxed init function, via eval_shape."""
  abstract_boxed = jax.eval_shape(init_fn, *init_args)
  param_shardings = sharding.logical_shardings(abstract_boxed, mesh, rules)
  params_abstract = nn.unbox(abstract_boxed)
  opt_shardings = sharding.opt_state_shardings(tx, params_abstract, param_shardings, mesh)
  shardings = TrainState(step=sharding.replicated(mesh), params=param_shardings,
                         opt_state=opt_shardings)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params_abstract,
                        opt_state=jax.eval_shape(tx.init, params_abstract))
  return abstract, shardings


def create_train_state(init_fn: Callable[..., Any], tx: optax.GradientTransformation, mesh: Mesh,
                       rules: sharding.LogicalRules, *init_args) -> tuple[TrainState, TrainState]:
  """Initialises a TrainState directly into its shardings.

  Args:
    init_fn: `init_fn(*init_args)` returns a BOXED parameter tree (leaves `nn.Partitioned`,
      e.g. `model.init` of a Linen model using `nn.with_logical_partitioning`).
    tx: the optimiser; its state is sharded like the parameters (scalars replicated).
    mesh: device mesh.
    rules: logical-axis rules (`sharding.DEFAULT_RULES`).
    *init_args: arguments of `init_fn` (PRNG key, dummy inputs).

  Returns:
    (state, state_shardings): the state (step 0) and a TrainState-shaped tree of NamedShardings,
    ready for `jax.jit(in_shardings=..., out_shardings=...)` and for checkpoint restore targets.
  """
  _, shardings = _state_shardings(init_fn, tx, mesh, rules, *init_args)

  def init(*args):
    params = nn.unbox(init_fn(*args))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  state = jax.jit(init, out_shardings=shardings)(*init_args)
  return state, shardings


def abstract_train_state(init_fn: Callable[..., Any], tx: optax.GradientTransformation, mesh: Mesh,
                         rules: sharding.LogicalRules, *init_args) -> TrainState:
  """The state as `jax.ShapeDtypeStruct`s carrying their shardings; allocates nothing.

  This is the restore target for a checkpoint, also onto a mesh other than the one it was saved
  from.
  """
  abstract, shardings = _state_shardings(init_fn, tx, mesh, rules, *init_args)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def abstract_like(tree: PyTree) -> PyTree:
  """ShapeDtypeStructs with the shardings of an existing tree of jax.Arrays (a restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def apply_gradients(state: TrainState, grads: PyTree,
                    tx: optax.GradientTransformation) -> TrainState:
  """One optimiser update: `params += tx.update(grads)`, `step += 1`."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state)


def train_step(state: TrainState, batch: PyTree, key: jax.Array, *,
               loss_fn: Callable[..., Any], tx: optax.GradientTransformation,
               num_micro_batches: int = 1, compute_dtype: Any = None,
               schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """Generic supervised step: accumulated loss and gradient over micro-batches, then one update.

  Bind the statics with `functools.partial(train_step, loss_fn=..., tx=..., ...)` and jit with
  `jit_train_step`. `loss_fn(params, micro_batch, key)` follows the accumulation protocol of
  `optimizer.accumulated_value_and_grad`: it returns `(loss_sum, (denominator, metrics))`.

  Metrics: "loss/total" (the full-batch objective), the loss function's own metrics, the
  pre-clipping gradient norm "optim/grad_norm", and "optim/lr" when `schedule_fn` is given.
  """
  (loss, metrics), grads = optimizer_lib.accumulated_value_and_grad(
      loss_fn, state.params, batch, num_micro_batches, key=key, compute_dtype=compute_dtype)
  metrics = dict(metrics)
  metrics["loss/total"] = loss
  metrics["optim/grad_norm"] = _global_norm(grads)
  if schedule_fn is not None:
    metrics["optim/lr"] = schedule_fn(state.step)
  return apply_gradients(state, grads, tx), metrics


def batch_shardings_for(batch: PyTree, mesh: Mesh) -> PyTree:
  """Leading dimension of every batch leaf over the data-parallel axes (scalars replicated)."""
  return jax.tree.map(
      lambda x: sharding.batch_sharding(mesh, x.ndim) if x.ndim else sharding.replicated(mesh),
      batch)


def jit_train_step(step_fn: Callable[[TrainState, PyTree, jax.Array], Any],
                   state_shardings: TrainState, batch_shardings: PyTree, mesh: Mesh
                   ) -> Callable[[TrainState, PyTree, jax.Array], Any]:
  """Jits `step_fn(state, batch, key) -> (state, metrics)` once, with explicit shardings.

  The state is donated (its buffers are reused for the new state); metrics come back replicated.
  """
  replicated = sharding.replicated(mesh)
  return jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings, replicated),
                 out_shardings=(state_shardings, replicated), donate_argnames=("state",))


def make_train_step(loss_fn: Callable[..., Any], tx: optax.GradientTransformation, *,
                    num_micro_batches: int = 1, compute_dtype: Any = None,
                    schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None
                    ) -> Callable[[TrainState, PyTree, jax.Array], Any]:
  """`train_step` with its statics bound (not jitted: see `jit_train_step`)."""
  return functools.partial(train_step, loss_fn=loss_fn, tx=tx, num_micro_batches=num_micro_batches,
                           compute_dtype=compute_dtype, schedule_fn=schedule_fn)
