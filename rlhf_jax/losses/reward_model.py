"""Bradley-Terry pairwise loss for reward models (RM).

The Bradley-Terry model (R. A. Bradley & M. E. Terry 1952) says a rater prefers the chosen answer
with probability sigma(r_c - r_r), so a reward model is fitted by the negative log-likelihood of the
observed preferences (Christiano et al. 2017; Ouyang et al. 2022, InstructGPT). With
d = r_c - r_r - margin, the per-pair loss is

  plain:            -log sigma(d)
  label smoothing:  -(1 - eps) log sigma(d) - eps log sigma(-d)
  tie:              -0.5 log sigma(r_c - r_r) - 0.5 log sigma(r_r - r_c)

* margin (Touvron et al. 2023, Llama 2, eq. 2): a per-pair offset from the annotator's preference
  strength ("significantly better" gets a larger margin), so clear preferences must be won by more.
* label smoothing eps in [0, 0.5]: the label is trusted with probability 1 - eps. This is the
  cross-entropy against the soft label (1 - eps, eps), a conservative loss for noisy preferences
  (as in conservative DPO, Mitchell 2023).
* ties: a tie counts as half a win for each side, i.e. the cross-entropy against the soft label
  (0.5, 0.5). It is minimised at r_c = r_r and pulls the two rewards together. A tie has no
  preferred side, so the margin and the label smoothing do not apply to tie pairs. (The
  Rao-Kupper / Davidson extensions, which add a tie parameter, are not used.)
* weights (e.g. Dawid-Skene posterior probabilities that the label is right): weighted mean of the
  per-pair losses with denominator sum(weights).
* reward centering (Eisenstein et al. 2023, "Helping or herding? Reward model ensembles mitigate
  but do not eliminate reward hacking"): + center_coef * mean_b (r_c + r_r)^2, an unweighted mean
  over pairs that pins the otherwise unidentified reward offset near 0.

Shape letters: B batch (pairs).
"""
from __future__ import annotations

import numbers
from typing import Optional

import jax
import jax.numpy as jnp


def _as_float_B(x: jax.Array, name: str, shape: tuple[int, ...]) -> jax.Array:
  if x.shape != shape:
    raise ValueError(f"bradley_terry_loss: {name} shape {x.shape} != r_chosen shape {shape}")
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def bradley_terry_loss(r_chosen_B: jax.Array, r_rejected_B: jax.Array, *,
                       margin_B: Optional[jax.Array] = None,
                       label_smoothing: float = 0.0,
                       weights_B: Optional[jax.Array] = None,
                       tie_B: Optional[jax.Array] = None,
                       center_coef: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Bradley-Terry negative log-likelihood of pairwise preferences, from scalar rewards.

  loss = sum_b w_b l_b / sum_b w_b + center_coef * mean_b (r_c,b + r_r,b)^2, with l_b as in the
  module docstring (w_b = 1 when no weights are given, so the first term is a plain mean).

  Args:
    r_chosen_B: rewards of the preferred responses, `[B]`.
    r_rejected_B: rewards of the other responses, `[B]`.
    margin_B: optional margins subtracted from r_c - r_r (non-tie pairs only).
    label_smoothing: eps in [0, 0.5], the assumed probability that a label is flipped.
    weights_B: optional non-negative per-pair weights; the denominator is their sum.
    tie_B: optional booleans, True for pairs rated as ties (the chosen/rejected order is arbitrary).
    center_coef: coefficient of the reward-centering penalty, >= 0.

  Returns:
    `(loss, metrics)` with metrics (slash-named like the DPO family's)
      loss: the returned loss; loss/bradley_terry: the weighted Bradley-Terry term; loss/center:
      the centering term (before center_coef);
      rewards/accuracy: fraction of non-tie pairs with r_c > r_r (strictly; unweighted; 0 if all
      pairs are ties);
      rewards/margin: mean r_c - r_r over non-tie pairs (unweighted);
      rewards/chosen, rewards/rejected: mean rewards over all pairs;
      rewards/std: standard deviation of all 2B rewards.

  Example:
    >>> bradley_terry_loss(jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0]))[0]
    ... # 0.5 (log(1 + e^-1) + log 2)
  """
  if r_chosen_B.ndim != 1:
    raise ValueError(f"bradley_terry_loss: r_chosen must be [B], got shape {r_chosen_B.shape}")
  shape = r_chosen_B.shape
  if isinstance(label_smoothing, numbers.Number) and not 0.0 <= label_smoothing <= 0.5:
    raise ValueError(
        f"bradley_terry_loss: label_smoothing must be in [0, 0.5], got {label_smoothing}")
  if isinstance(center_coef, numbers.Number) and not center_coef >= 0.0:
    raise ValueError(f"bradley_terry_loss: center_coef must be >= 0, got {center_coef}")
  r_c_B = _as_float_B(r_chosen_B, "r_chosen", shape)
  r_r_B = _as_float_B(r_rejected_B, "r_rejected", shape)
  diff_B = r_c_B - r_r_B

  d_B = diff_B if margin_B is None else diff_B - _as_float_B(margin_B, "margin", shape)
  eps = label_smoothing
  pair_B = -(1.0 - eps) * jax.nn.log_sigmoid(d_B) - eps * jax.nn.log_sigmoid(-d_B)
  if tie_B is None:
    is_tie_B = jnp.zeros(shape, bool)
  else:
    if tie_B.shape != shape:
      raise ValueError(f"bradley_terry_loss: tie shape {tie_B.shape} != r_chosen shape {shape}")
    is_tie_B = tie_B.astype(bool)
    tie_loss_B = -0.5 * (jax.nn.log_sigmoid(diff_B) + jax.nn.log_sigmoid(-diff_B))
    pair_B = jnp.where(is_tie_B, tie_loss_B, pair_B)

  if weights_B is None:
    bt_loss = jnp.mean(pair_B)
  else:
    w_B = _as_float_B(weights_B, "weights", shape)
    # A clamp, not a max with 1: fractional posteriors may legitimately sum to less than 1.
    bt_loss = jnp.sum(w_B * pair_B) / jnp.maximum(jnp.sum(w_B), 1e-12)

  center_loss = jnp.mean(jnp.square(r_c_B + r_r_B))
  loss = bt_loss + center_coef * center_loss

  decided_B = ~is_tie_B
  num_decided = jnp.maximum(jnp.sum(decided_B.astype(jnp.float32)), 1.0)
  metrics = {
      "loss": loss,
      "loss/bradley_terry": bt_loss,
      "loss/center": center_loss,
      "rewards/accuracy": jnp.sum(jnp.where(decided_B & (diff_B > 0), 1.0, 0.0)) / num_decided,
      "rewards/margin": jnp.sum(jnp.where(decided_B, diff_B, 0.0)) / num_decided,
      "rewards/chosen": jnp.mean(r_c_B),
      "rewards/rejected": jnp.mean(r_r_B),
      "rewards/std": jnp.std(jnp.concatenate([r_c_B, r_r_B])),
  }
  return loss, metrics
