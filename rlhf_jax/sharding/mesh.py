"""Device meshes with the axes ("data", "fsdp", "tensor").

data:   pure data parallelism (parameters replicated across it).
fsdp:   data parallelism whose members also shard parameters and optimiser state (ZeRO-3 style).
tensor: Megatron-style model parallelism inside attention heads and the MLP.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import jax
import jax.experimental.mesh_utils
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Fills a single -1 entry with the remaining devices and validates the product.

  Args:
    axes: sizes for some of MESH_AXES (missing axes default to 1); at most one may be -1.
    num_devices: devices available.

  Returns:
    The sizes in MESH_AXES order.
  """
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh axes must be among {MESH_AXES}; got unknown {sorted(unknown)}")
  sizes = [int(axes.get(a, 1)) for a in MESH_AXES]
  fills = [i for i, s in enumerate(sizes) if s == -1]
  if len(fills) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  for name, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ValueError(f"mesh.{name} must be positive or -1, got {s}")
  known = math.prod(s for s in sizes if s != -1)
  if fills:
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not divisible by "
                       f"the fixed axes' product {known}")
    sizes[fills[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
                     f"{num_devices} are available")
  return tuple(sizes)


def make_mesh(axes: Optional[Mapping[str, int]] = None,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A mesh over `devices` (default: all) with classic (Auto) axis types for jit shardings.

  `axes=None` puts every device on `data`, the safe default for small models.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(axes or {"data": -1}, len(devices))
  if devices == list(jax.devices()) and len(devices) > 1:
    dev_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
  else:
    dev_array = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(dev_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def single_device_mesh(device: Optional[jax.Device] = None) -> Mesh:
  """A 1x1x1 mesh: lets single-device code share the sharded code path."""
  return make_mesh({"data": 1}, devices=[device or jax.devices()[0]])


def describe_topology(mesh: Optional[Mesh] = None) -> dict:
  """Facts worth logging at the start of every run."""
  info = {
      "platform": jax.devices()[0].platform,
      "device_kind": jax.devices()[0].device_kind,
      "global_devices": jax.device_count(),
      "local_devices": jax.local_device_count(),
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
  }
  if mesh is not None:
    info["mesh"] = dict(mesh.shape)
  return info
