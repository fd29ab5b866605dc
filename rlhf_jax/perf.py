"""Measuring speed honestly: machine peaks measured in-process, model FLOPs, robust timings.

Utilisation is reported against what this process measures on this device (a large square matmul
for FLOP/s, a large array copy for memory bandwidth), never against a datasheet number.
"""
from __future__ import annotations

import resource
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig


def block(x: Any) -> Any:
  return jax.block_until_ready(x)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
  """Compile/first-call time separately, then the median (and min/max) of `repeats` timed calls."""
  t0 = time.perf_counter()
  block(fn())
  first = time.perf_counter() - t0
  for _ in range(max(warmup - 1, 0)):
    block(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return {"first_call_s": first, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def peak_matmul_flops(n: int = 2048, dtype: Any = jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a large square matmul (2 n^3 FLOPs), median of several calls."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.dot)
  t = time_calls(lambda: f(a, b), repeats)
  return 2 * n**3 / t["median_s"]


def copy_bandwidth(num_bytes: int = 256 * 2**20, repeats: int = 5) -> float:
  """Bytes/s moved by an elementwise copy (read + write counted)."""
  x = jnp.ones((num_bytes // 4,), jnp.float32)
  f = jax.jit(lambda x: x * 1.0001)
  t = time_calls(lambda: f(x), repeats)
  return 2 * num_bytes / t["median_s"]


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """6 N (forward + backward of the matmuls, embeddings' gather excluded) plus attention 12 L_layers D_attn T."""
  n = cfg.num_params(include_embeddings=False) + cfg.d_model * cfg.vocab_size  # output projection is a matmul
  attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len / 2  # causal: half the scores
  return 6 * n + attn


def forward_flops_per_token(cfg: ModelConfig, context_len: int) -> float:
  n = cfg.num_params(include_embeddings=False) + cfg.d_model * cfg.vocab_size
  return 2 * n + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * context_len


def param_bytes(params: Any) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def peak_rss_mib() -> float:
  """Peak resident memory of this process (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
