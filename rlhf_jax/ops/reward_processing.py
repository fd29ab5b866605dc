"""Reward post-processing: per-batch whitening, clipping and running mean/std normalisation.

PPO_DETAILS item 12 (from Huang et al. 2023, "The N Implementation Details of RLHF with PPO", and
Zheng et al. 2023, "Secrets of RLHF in LLMs Part I: PPO"). All functions are pure; the running
statistics live in a `RunningMoments` NamedTuple that the training loop carries.

The running update combines batch moments with the stored ones by the parallel form of Welford's
algorithm (Chan, Golub and LeVeque 1979):
  n = n_a + n_b,  delta = mean_b - mean_a,
  mean = mean_a + delta * n_b / n,   M2 = M2_a + M2_b + delta^2 * n_a * n_b / n,
where M2 is the sum of squared deviations, so var = M2 / n (population) or M2 / (n - 1).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from rlhf_jax.ops.masked import masked_mean, masked_sum, masked_whiten


def _float(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mask_or_ones(fn: str, x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  if mask is None:
    return jnp.ones(x.shape, bool)
  if mask.shape != x.shape:
    raise ValueError(f"{fn}: `mask` has shape {mask.shape}, expected {x.shape} (same as the data)")
  return mask


def whiten_rewards(rewards: jax.Array, mask: Optional[jax.Array] = None, *,
                   shift_mean: bool = True, eps: float = 1e-8) -> jax.Array:
  """(x - mean) / std over the masked entries of the whole batch (any shape, e.g. [B] or [B, S]).

  shift_mean=False adds the mean back (only the scale changes; TRL's whiten_rewards). Masked
  entries come back as 0. Example: [1, 3] -> [-1, 1]; with shift_mean=False -> [1, 3].
  """
  rewards = _float(rewards)
  return masked_whiten(rewards, _mask_or_ones("whiten_rewards", rewards, mask),
                       shift_mean=shift_mean, eps=eps)


def clip_rewards(rewards: jax.Array, clip: float) -> jax.Array:
  """Clips rewards to [-clip, clip] (e.g. 10, Zheng et al. 2023)."""
  if isinstance(clip, (int, float)) and clip <= 0:
    raise ValueError(f"clip_rewards: `clip`={clip} must be positive")
  return jnp.clip(_float(rewards), -clip, clip)


class RunningMoments(NamedTuple):
  """Running count, mean and M2 (sum of squared deviations) of every value seen so far."""
  count: jax.Array
  mean: jax.Array
  m2: jax.Array


def running_moments_init() -> RunningMoments:
  """Empty statistics (count 0)."""
  zero = jnp.zeros((), jnp.float32)
  return RunningMoments(count=zero, mean=zero, m2=zero)


def running_moments_update(state: RunningMoments, x: jax.Array,
                           mask: Optional[jax.Array] = None) -> RunningMoments:
  """Folds the masked entries of `x` (any shape) into `state` (parallel Welford, see module doc).

  An empty mask leaves the state unchanged.
  """
  x = _float(x)
  mask = _mask_or_ones("running_moments_update", x, mask)
  n_b = jnp.sum(mask.astype(x.dtype))
  mean_b = masked_mean(x, mask)
  m2_b = masked_sum(jnp.square(x - mean_b), mask)
  n = state.count + n_b
  safe_n = jnp.maximum(n, 1.0)
  delta = mean_b - state.mean
  mean = state.mean + delta * n_b / safe_n
  m2 = state.m2 + m2_b + jnp.square(delta) * state.count * n_b / safe_n
  return RunningMoments(count=n.astype(state.count.dtype), mean=mean.astype(state.mean.dtype),
                        m2=m2.astype(state.m2.dtype))


def running_moments_std(state: RunningMoments, ddof: int = 0) -> jax.Array:
  """sqrt(M2 / (count - ddof)); 0 while count <= ddof."""
  denom = state.count - ddof
  return jnp.sqrt(jnp.where(denom > 0, state.m2 / jnp.where(denom > 0, denom, 1.0), 0.0))


def normalize_with_running_moments(x: jax.Array, state: RunningMoments, *, shift_mean: bool = True,
                                   ddof: int = 0, eps: float = 1e-8,
                                   clip: Optional[float] = None) -> jax.Array:
  """(x - mean) / (std + eps) with running statistics, optionally clipped to [-clip, clip].

  shift_mean=False only rescales: x / (std + eps). Update the state first (with this batch) if the
  current batch should count.
  """
  x = _float(x)
  centred = x - state.mean if shift_mean else x
  out = centred / (running_moments_std(state, ddof) + eps)
  return out if clip is None else clip_rewards(out, clip)
