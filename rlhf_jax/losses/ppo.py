"""Token-level PPO (Proximal Policy Optimization, Schulman et al. 2017) losses for language models.

Acronyms: PPO as above; DAPO = Decoupled clip and Dynamic sAmpling Policy Optimization (Yu et al.
2025, asymmetric "clip-higher"); GRPO = Group Relative Policy Optimization; KL = Kullback-Leibler
divergence; TIS = truncated importance sampling (Yao et al. 2025, rollout/trainer mismatch).

All functions take [B, S] arrays over response tokens with an explicit `mask_BxS` and reduce with
`rlhf_jax.ops.masked.aggregate_loss(mode=aggregation)`:
  token_mean:    sum(l * m) / sum(m)
  sequence_mean: mean_b [ sum_s(l * m) / sum_s(m) ]
  fixed_length:  sum(l * m) / (B * fixed_length)        (Dr. GRPO, Liu et al. 2025)
Diagnostic metrics (clip fractions, approximate KL, ratio statistics) are always per-token means
over the mask, whatever the aggregation of the loss. Everything is computed in float32 or wider.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rlhf_jax.ops.masked import Aggregation, aggregate_loss, masked_mean, masked_var

Metrics = dict[str, jax.Array]


def _float(x: jax.Array) -> jax.Array:
  """Upcasts to at least float32 (float64 stays float64 so gradient checks can run in x64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_shapes(fn: str, mask_BxS: jax.Array, **arrays: Optional[jax.Array]) -> None:
  if mask_BxS.ndim != 2:
    raise ValueError(f"{fn}: `mask_BxS` must have shape [B, S], got {mask_BxS.shape}")
  for name, x in arrays.items():
    if x is not None and x.shape != mask_BxS.shape:
      raise ValueError(f"{fn}: `{name}` has shape {x.shape}, expected {mask_BxS.shape} "
                       "(same as mask_BxS)")


def _masked_max(x_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  """Max over masked entries; 0 when the mask is empty."""
  m = mask_BxS.astype(bool)
  return jnp.where(jnp.any(m), jnp.max(jnp.where(m, x_BxS, -jnp.inf)), 0.0)


def clipped_surrogate_loss(
    logp_BxS: jax.Array, old_logp_BxS: jax.Array, adv_BxS: jax.Array, mask_BxS: jax.Array, *,
    clip_eps: float = 0.2, clip_eps_high: Optional[float] = None,
    dual_clip: Optional[float] = None, aggregation: Aggregation = "token_mean",
    fixed_length: Optional[int] = None, is_weights_BxS: Optional[jax.Array] = None,
) -> tuple[jax.Array, Metrics]:
  """PPO clipped surrogate policy loss (Schulman et al. 2017, eq. 7), per token, negated.

  With r = exp(logp - old_logp) and advantage A:
    l = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))
  eps_low = clip_eps; eps_high = clip_eps_high (DAPO clip-higher) or clip_eps when None.
  Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL"), c > 1, only
  for A < 0:  l = min(l, -c A), which bounds the loss when r is far above 1 for a bad action.
  Optional per-token `is_weights_BxS` (e.g. `tis_weights`) multiply l before aggregation.

  Metrics: clipfrac (fraction of tokens where the clipped branch is strictly active),
  dual_clipfrac (only with dual_clip), approx_kl = 0.5 * mean(dlogp^2), approx_kl_k3 =
  mean(r - 1 - log r) (Schulman's k3 estimator of KL(old || new), non-negative), ratio_mean,
  ratio_max. On policy (r = 1) the token-mean loss is -mean(A) and clipfrac is 0.

  Args:
    logp_BxS: log-probs of the sampled tokens under the current policy (differentiated).
    old_logp_BxS: log-probs under the policy that produced the advantages (constant).
    adv_BxS: per-token advantages (constant).
    mask_BxS: 1 on response tokens.
    clip_eps, clip_eps_high, dual_clip: clipping parameters described above.
    aggregation, fixed_length: token reduction, see the module docstring.
    is_weights_BxS: optional constant per-token importance weights.

  Example:
    >>> loss, m = clipped_surrogate_loss(lp, lp, adv, mask)  # on policy: loss == -masked_mean(adv)
  """
  fn = "clipped_surrogate_loss"
  _check_shapes(fn, mask_BxS, logp_BxS=logp_BxS, old_logp_BxS=old_logp_BxS, adv_BxS=adv_BxS,
                is_weights_BxS=is_weights_BxS)
  if isinstance(clip_eps, (int, float)) and not 0.0 < clip_eps < 1.0:
    raise ValueError(f"{fn}: `clip_eps`={clip_eps} must lie in (0, 1)")
  if isinstance(clip_eps_high, (int, float)) and clip_eps_high <= 0.0:
    raise ValueError(f"{fn}: `clip_eps_high`={clip_eps_high} must be positive")
  if isinstance(dual_clip, (int, float)) and dual_clip <= 1.0:
    raise ValueError(f"{fn}: `dual_clip`={dual_clip} must be > 1 (Ye et al. 2020)")
  eps_high = clip_eps if clip_eps_high is None else clip_eps_high

  valid_BxS = mask_BxS.astype(bool)
  # Padding may hold -inf log-probs; zeroing before exp keeps both the loss and its gradient finite.
  dlogp_BxS = jnp.where(valid_BxS, _float(logp_BxS) - _float(old_logp_BxS), 0.0)
  adv_BxS = jnp.where(valid_BxS, _float(adv_BxS), 0.0)
  ratio_BxS = jnp.exp(dlogp_BxS)
  unclipped_BxS = -adv_BxS * ratio_BxS
  clipped_BxS = -adv_BxS * jnp.clip(ratio_BxS, 1.0 - clip_eps, 1.0 + eps_high)
  loss_BxS = jnp.maximum(unclipped_BxS, clipped_BxS)

  mask_f_BxS = mask_BxS.astype(dlogp_BxS.dtype)
  metrics = {"clipfrac": masked_mean((clipped_BxS > unclipped_BxS).astype(mask_f_BxS.dtype),
                                     mask_BxS)}
  if dual_clip is not None:
    dual_BxS = -dual_clip * adv_BxS
    dual_active_BxS = (adv_BxS < 0) & (dual_BxS < loss_BxS)
    loss_BxS = jnp.where(dual_active_BxS, dual_BxS, loss_BxS)
    metrics["dual_clipfrac"] = masked_mean(dual_active_BxS.astype(mask_f_BxS.dtype), mask_BxS)
  if is_weights_BxS is not None:
    w_BxS = jnp.where(valid_BxS, jax.lax.stop_gradient(_float(is_weights_BxS)), 0.0)
    loss_BxS = w_BxS * loss_BxS

  loss = aggregate_loss(loss_BxS, mask_BxS, aggregation, fixed_length)
  dlogp_sg_BxS = jax.lax.stop_gradient(dlogp_BxS)
  ratio_sg_BxS = jax.lax.stop_gradient(ratio_BxS)
  metrics.update({
      "approx_kl": 0.5 * masked_mean(jnp.square(dlogp_sg_BxS), mask_BxS),
      "approx_kl_k3": masked_mean(ratio_sg_BxS - 1.0 - dlogp_sg_BxS, mask_BxS),
      "ratio_mean": masked_mean(ratio_sg_BxS, mask_BxS),
      "ratio_max": _masked_max(ratio_sg_BxS, mask_BxS),
  })
  return loss, metrics


def value_loss(
    values_BxS: jax.Array, old_values_BxS: jax.Array, returns_BxS: jax.Array,
    mask_BxS: jax.Array, *, clip_eps: Optional[float] = 0.2,
    aggregation: Aggregation = "token_mean", fixed_length: Optional[int] = None,
) -> tuple[jax.Array, Metrics]:
  """Clipped value loss (PPO2 baselines; PPO_DETAILS item 16).

    v_clip = old_v + clip(v - old_v, -eps, eps)
    l = 0.5 * max((v - R)^2, (v_clip - R)^2)        (clip_eps=None: l = 0.5 * (v - R)^2)

  Metrics: vf_clipfrac (fraction of tokens where the clipped term is strictly larger; 0 without
  clipping) and vf_explained_var = 1 - Var(R - v) / Var(R) over masked tokens (0 when Var(R) = 0).

  Example: v = 1.5, old_v = 1, R = 0, eps = 0.2: v_clip = 1.2, l = 0.5 * max(2.25, 1.44) = 1.125.
  """
  fn = "value_loss"
  _check_shapes(fn, mask_BxS, values_BxS=values_BxS, old_values_BxS=old_values_BxS,
                returns_BxS=returns_BxS)
  if isinstance(clip_eps, (int, float)) and clip_eps <= 0.0:
    raise ValueError(f"{fn}: `clip_eps`={clip_eps} must be positive (None disables clipping)")
  valid_BxS = mask_BxS.astype(bool)
  v_BxS = jnp.where(valid_BxS, _float(values_BxS), 0.0)
  ret_BxS = jnp.where(valid_BxS, _float(returns_BxS), 0.0)
  unclipped_BxS = jnp.square(v_BxS - ret_BxS)
  if clip_eps is None:
    loss_BxS = 0.5 * unclipped_BxS
    clipfrac = jnp.zeros((), v_BxS.dtype)
  else:
    old_BxS = jnp.where(valid_BxS, _float(old_values_BxS), 0.0)
    v_clip_BxS = old_BxS + jnp.clip(v_BxS - old_BxS, -clip_eps, clip_eps)
    clipped_BxS = jnp.square(v_clip_BxS - ret_BxS)
    loss_BxS = 0.5 * jnp.maximum(unclipped_BxS, clipped_BxS)
    clipfrac = masked_mean((clipped_BxS > unclipped_BxS).astype(v_BxS.dtype), mask_BxS)
  loss = aggregate_loss(loss_BxS, mask_BxS, aggregation, fixed_length)

  v_sg_BxS = jax.lax.stop_gradient(v_BxS)
  var_ret = masked_var(ret_BxS, mask_BxS)
  var_res = masked_var(ret_BxS - v_sg_BxS, mask_BxS)
  explained_var = jnp.where(var_ret > 0, 1.0 - var_res / jnp.where(var_ret > 0, var_ret, 1.0), 0.0)
  return loss, {"vf_clipfrac": clipfrac, "vf_explained_var": explained_var}


def entropy_bonus(entropy_BxS: jax.Array, mask_BxS: jax.Array, *,
                  aggregation: Aggregation = "token_mean",
                  fixed_length: Optional[int] = None) -> tuple[jax.Array, Metrics]:
  """Entropy bonus as a loss to minimise: l = -aggregate(entropy); add `coef * l` to the total.

  Metrics: entropy (per-token mean over the mask, whatever the aggregation).
  """
  _check_shapes("entropy_bonus", mask_BxS, entropy_BxS=entropy_BxS)
  entropy_BxS = _float(entropy_BxS)
  loss = -aggregate_loss(entropy_BxS, mask_BxS, aggregation, fixed_length)
  return loss, {"entropy": masked_mean(jax.lax.stop_gradient(entropy_BxS), mask_BxS)}


def tis_weights(trainer_logp_BxS: jax.Array, rollout_logp_BxS: jax.Array,
                cap: float = 2.0) -> jax.Array:
  """Truncated importance-sampling weights for rollout/trainer mismatch (Yao et al. 2025).

    w = min(exp(trainer_logp - rollout_logp), cap)        (constant: gradients are stopped)

  trainer_logp: old-policy log-probs recomputed by the trainer; rollout_logp: the behaviour
  log-probs recorded by the sampler. Pass the result as `is_weights_BxS` to
  `clipped_surrogate_loss`. Masked positions are the caller's business (the loss masks them).
  Example: trainer -1.0, rollout -1.5, cap 1.5 -> min(e^0.5, 1.5) = 1.5.
  """
  if trainer_logp_BxS.shape != rollout_logp_BxS.shape:
    raise ValueError(f"tis_weights: `trainer_logp_BxS` shape {trainer_logp_BxS.shape} != "
                     f"`rollout_logp_BxS` shape {rollout_logp_BxS.shape}")
  if isinstance(cap, (int, float)) and cap <= 0.0:
    raise ValueError(f"tis_weights: `cap`={cap} must be positive")
  log_w = _float(trainer_logp_BxS) - _float(rollout_logp_BxS)
  return jax.lax.stop_gradient(jnp.minimum(jnp.exp(log_w), cap))
