"""Tests for rlhf_jax.algorithms.batch_math."""
import jax
import pytest

from rlhf_jax import sharding
from rlhf_jax.algorithms import batch_math


def test_derive_batch_all_sizes():
  sizes = batch_math.derive_batch(64, 16, data_parallel_size=4, num_processes=2)
  assert sizes == batch_math.BatchSizes(
      global_batch_size=64, micro_batch_size=16, num_micro_batches=4, data_parallel_size=4,
      num_processes=2, per_device_micro_batch=4, per_host_batch_size=32, per_host_micro_batch=8)


def test_no_micro_batch_means_no_accumulation():
  sizes = batch_math.derive_batch(12, None, data_parallel_size=3)
  assert sizes.num_micro_batches == 1 and sizes.micro_batch_size == 12
  assert sizes.per_device_micro_batch == 4 and sizes.per_host_batch_size == 12


def test_derived_sizes_are_consistent_over_a_grid():
  for global_bs in (8, 24, 48):
    for micro in (4, 8, 24):
      for dp in (1, 2, 4):
        for procs in (1, 2):
          try:
            s = batch_math.derive_batch(global_bs, micro, dp, procs)
          except ValueError:
            continue
          assert s.num_micro_batches * s.micro_batch_size == global_bs
          assert s.per_device_micro_batch * dp * s.num_micro_batches == global_bs
          assert s.per_host_batch_size * procs == global_bs
          assert s.per_host_micro_batch * s.num_micro_batches == s.per_host_batch_size


@pytest.mark.parametrize("args,message", [
    ((64, 24, 1, 1), r"global_batch_size \(64\) must be divisible by micro_batch_size \(24\)"),
    ((64, 16, 3, 1), r"micro_batch_size \(16\) must be divisible by data_parallel_size \(3\)"),
    ((64, 16, 4, 3), r"data_parallel_size \(4\) must be divisible by num_processes \(3\)"),
    ((8, 16, 1, 1), r"micro_batch_size \(16\) must not exceed global_batch_size \(8\)"),
    ((0, None, 1, 1), "global_batch_size must be a positive integer"),
    ((8, 4, 0, 1), "data_parallel_size must be a positive integer"),
    ((8, 4, 1, 1.5), "num_processes must be a positive integer"),
])
def test_errors_name_the_fields(args, message):
  with pytest.raises(ValueError, match=message):
    batch_math.derive_batch(*args)


def test_derive_batch_for_mesh_counts_data_and_fsdp_not_tensor():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sizes = batch_math.derive_batch_for_mesh(32, 8, mesh)
  assert sizes.data_parallel_size == 4 and sizes.num_micro_batches == 4
  assert sizes.per_device_micro_batch == 2 and sizes.num_processes == jax.process_count()
  with pytest.raises(ValueError, match="data_parallel_size"):
    batch_math.derive_batch_for_mesh(32, 2, mesh)
