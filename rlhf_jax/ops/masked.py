"""Masked reductions with explicit denominators.

Every RL and preference objective reduces per-token quantities over a response mask. The choice of
denominator changes the objective (per-token mean vs per-sequence mean vs a fixed constant, see
DAPO and Dr. GRPO), so it is always an explicit argument here, never an accident of broadcasting.
"""
from __future__ import annotations

from typing import Literal, Optional

import jax
import jax.numpy as jnp

Aggregation = Literal["token_mean", "sequence_mean", "fixed_length"]


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Sum of `x` where `mask` is set (mask broadcast must be exact: same shape as `x`)."""
  if x.shape != mask.shape:
    raise ValueError(f"x shape {x.shape} != mask shape {mask.shape}")
  return jnp.sum(jnp.where(mask.astype(bool), x, 0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None,
                denominator: Optional[jax.Array | float] = None) -> jax.Array:
  """Masked mean; the denominator defaults to the mask count (clamped at 1 so empty masks give 0)."""
  total = masked_sum(x, mask, axis=axis)
  if denominator is None:
    denominator = jnp.maximum(jnp.sum(mask.astype(jnp.float32), axis=axis), 1.0)
  return total / denominator


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = False) -> jax.Array:
  """Variance of the masked entries of `x` (all axes)."""
  mean = masked_mean(x, mask)
  count = jnp.sum(mask.astype(jnp.float32))
  sq = masked_sum(jnp.square(x - mean), mask)
  denom = jnp.maximum(count - 1.0, 1.0) if unbiased else jnp.maximum(count, 1.0)
  return sq / denom


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
  """(x - mean) / std over the masked entries; with shift_mean=False the mean is added back.

  Masked-out entries are returned as 0 so they cannot leak into later sums.
  """
  mean = masked_mean(x, mask)
  var = masked_var(x, mask)
  out = (x - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return jnp.where(mask.astype(bool), out, 0.0)


def aggregate_loss(loss_BxS: jax.Array, mask_BxS: jax.Array, mode: Aggregation,
                   fixed_length: Optional[int] = None) -> jax.Array:
  """Reduces a per-token loss to a scalar.

  token_mean:    sum(loss * mask) / sum(mask)                      (all tokens weigh the same)
  sequence_mean: mean_b [ sum_s(loss * mask) / sum_s(mask) ]       (all sequences weigh the same)
  fixed_length:  sum(loss * mask) / (B * fixed_length)             (Dr. GRPO: no length bias)
  """
  if mode == "token_mean":
    return masked_mean(loss_BxS, mask_BxS)
  if mode == "sequence_mean":
    per_seq_B = masked_mean(loss_BxS, mask_BxS, axis=-1)
    return jnp.mean(per_seq_B)
  if mode == "fixed_length":
    if fixed_length is None or fixed_length <= 0:
      raise ValueError("aggregate_loss(mode='fixed_length') needs a positive fixed_length")
    return masked_sum(loss_BxS, mask_BxS) / (loss_BxS.shape[0] * fixed_length)
  raise ValueError(f"unknown loss aggregation {mode!r}; use token_mean, sequence_mean or fixed_length")
