"""Batch arithmetic: global batch, micro-batches, data-parallel devices and hosts, derived once.

Vocabulary (all sizes count examples, i.e. sequences or preference pairs):

  global batch      examples consumed by one optimiser step, summed over every host and device.
  micro-batch       examples in one forward/backward pass, summed over every data-parallel device
                    (the global batch is cut into `num_micro_batches` of them and their gradients
                    are accumulated inside one jitted step).
  data-parallel     devices that hold different examples: the product of the mesh axes the batch is
  size              sharded over (`sharding.data_parallel_size(mesh)`: "data" x "fsdp");
                    tensor-parallel devices see the same examples and do not count.
  per-device        examples one data-parallel device processes per micro-batch.
  per-host          examples one process loads per optimiser step (what its data loader yields).

Every quantity above must be a whole number; `derive_batch` checks this in one place and raises a
ValueError naming the offending fields, so a bad config fails before anything compiles.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from rlhf_jax import sharding


@dataclasses.dataclass(frozen=True)
class BatchSizes:
  """Derived batch sizes; see the module docstring for the vocabulary."""

  global_batch_size: int  # examples per optimiser step, all hosts
  micro_batch_size: int  # examples per forward/backward pass, all data-parallel devices
  num_micro_batches: int  # gradient-accumulation steps per optimiser step
  data_parallel_size: int  # devices that hold different examples
  num_processes: int  # hosts (JAX processes)
  per_device_micro_batch: int  # examples per device per micro-batch
  per_host_batch_size: int  # examples one host loads per optimiser step
  per_host_micro_batch: int  # examples one host contributes to one micro-batch


def _check_positive(**values: int) -> None:
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_divides(numerator_name: str, numerator: int, denominator_name: str,
                   denominator: int, why: str) -> None:
  if numerator % denominator:
    raise ValueError(
        f"{numerator_name} ({numerator}) must be divisible by {denominator_name} "
        f"({denominator}) {why}")


def derive_batch(global_batch_size: int, micro_batch_size: Optional[int] = None,
                 data_parallel_size: int = 1, num_processes: int = 1) -> BatchSizes:
  """Derives and validates every batch size from the four free ones.

  Args:
    global_batch_size: examples per optimiser step (all hosts).
    micro_batch_size: examples per forward/backward pass (all data-parallel devices); None means
      no accumulation (micro-batch = global batch).
    data_parallel_size: devices that hold different examples (`sharding.data_parallel_size(mesh)`).
    num_processes: number of JAX processes (hosts), `jax.process_count()`.

  Returns:
    The derived `BatchSizes`.

  Raises:
    ValueError: naming the fields when a size is not positive or one does not divide another.

  Example:
    >>> derive_batch(64, 16, data_parallel_size=4, num_processes=2).num_micro_batches
    4
  """
  if micro_batch_size is None:
    micro_batch_size = global_batch_size
  _check_positive(global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                  data_parallel_size=data_parallel_size, num_processes=num_processes)
  if micro_batch_size > global_batch_size:
    raise ValueError(f"micro_batch_size ({micro_batch_size}) must not exceed global_batch_size "
                     f"({global_batch_size})")
  _check_divides("global_batch_size", global_batch_size, "micro_batch_size", micro_batch_size,
                 "so that the step is a whole number of micro-batches")
  _check_divides("micro_batch_size", micro_batch_size, "data_parallel_size", data_parallel_size,
                 "so that every data-parallel device gets the same number of examples")
  _check_divides("data_parallel_size", data_parallel_size, "num_processes", num_processes,
                 "so that every host drives the same number of data-parallel shards")
  return BatchSizes(
      global_batch_size=global_batch_size,
      micro_batch_size=micro_batch_size,
      num_micro_batches=global_batch_size // micro_batch_size,
      data_parallel_size=data_parallel_size,
      num_processes=num_processes,
      per_device_micro_batch=micro_batch_size // data_parallel_size,
      per_host_batch_size=global_batch_size // num_processes,
      per_host_micro_batch=micro_batch_size // num_processes,
  )


def derive_batch_for_mesh(global_batch_size: int, micro_batch_size: Optional[int],
                          mesh: jax.sharding.Mesh) -> BatchSizes:
  """`derive_batch` with the data-parallel size read from `mesh` and the process count from JAX."""
  return derive_batch(global_batch_size, micro_batch_size,
                      data_parallel_size=sharding.data_parallel_size(mesh),
                      num_processes=jax.process_count())
