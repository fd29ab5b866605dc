"""Logits processors: temperature, top-k and top-p (nucleus) filtering, in float32.

The sampler returns the log-probabilities of the distribution it actually sampled from, i.e. after
these processors. With top-k/top-p off that is log_softmax(logits / temperature), which is what a
trainer must recompute (PPO_DETAILS item 4).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def apply_temperature(logits_BxV: jax.Array, temperature: float) -> jax.Array:
  if temperature <= 0:
    raise ValueError(f"temperature must be positive for sampling (use greedy for 0), got {temperature}")
  return logits_BxV.astype(jnp.float32) / temperature


def top_k_filter(logits_BxV: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits of each row (k <= 0 disables); ties at the threshold are kept."""
  if k <= 0 or k >= logits_BxV.shape[-1]:
    return logits_BxV
  kth_Bx1 = jax.lax.top_k(logits_BxV, k)[0][:, -1:]
  return jnp.where(logits_BxV >= kth_Bx1, logits_BxV, NEG_INF)


def top_p_filter(logits_BxV: jax.Array, p: float) -> jax.Array:
  """Keeps the smallest set of tokens whose probability mass reaches p (Holtzman et al. 2020)."""
  if p >= 1.0:
    return logits_BxV
  if p <= 0:
    raise ValueError(f"top_p must be in (0, 1], got {p}")
  sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
  probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
  mass_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
  keep_BxV = mass_before_BxV < p  # the top token always has mass_before 0
  threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BxV >= threshold_Bx1, logits_BxV, NEG_INF)


def process_logits(logits_BxV: jax.Array, temperature: float, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Temperature, then top-k, then top-p. Returns float32 logits whose softmax is sampled."""
  return top_p_filter(top_k_filter(apply_temperature(logits_BxV, temperature), top_k), top_p)
