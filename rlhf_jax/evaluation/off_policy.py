"""Off-policy evaluation (OPE): the expected reward of a new policy from samples of an old one.

Responses y_b ~ pi_old with rewards r_b. With importance weights w_b = pi_new(y_b) / pi_old(y_b),

  ordinary IS:           V_IS   = (1/B) sum_b w_b r_b         (unbiased, can have huge variance)
  self-normalised IS:    V_SNIS = sum_b w_b r_b / sum_b w_b   (biased O(1/B), bounded by max |r|)

and Kish's effective sample size ESS = (sum_b w_b)^2 / sum_b w_b^2 (Kish 1965) measures how many
equally weighted samples the weighted set is worth: B when pi_new = pi_old, near 1 when one
sample dominates. A small ESS means the estimate is untrustworthy (Owen 2013, ch. 9).

For sequences, log w_b = sum over response tokens of (log pi_new - log pi_old); everything is
computed from log-weights so that long responses (log-weights in the hundreds) do not overflow.

Shape letters: B responses, S response tokens.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import correlation


def sequence_log_ratio(logp_new_BxS: npt.ArrayLike, logp_old_BxS: npt.ArrayLike,
                       mask_BxS: npt.ArrayLike) -> np.ndarray:
  """Per-sequence log-weight log w_b = sum_s mask_bs (logp_new_bs - logp_old_bs), in float64."""
  new = np.asarray(logp_new_BxS, np.float64)
  old = np.asarray(logp_old_BxS, np.float64)
  mask = np.asarray(mask_BxS, np.float64)
  if not new.shape == old.shape == mask.shape or new.ndim != 2:
    raise ValueError(f"logp_new_BxS {new.shape}, logp_old_BxS {old.shape} and mask_BxS "
                     f"{mask.shape} must share one [batch, length] shape")
  # Padding may hold -inf / garbage log-probs; mask by selection, not multiplication.
  return np.where(mask > 0, new - old, 0.0).sum(axis=1)


def _logsumexp(x: np.ndarray) -> float:
  m = float(np.max(x))
  return m + float(np.log(np.sum(np.exp(x - m))))


def kish_effective_sample_size(log_w_B: npt.ArrayLike) -> float:
  """ESS = (sum w)^2 / sum w^2 = exp(2 logsumexp(log w) - logsumexp(2 log w)); in [1, B]."""
  lw = correlation.as_float_vector("log_w_B", log_w_B)
  if lw.size == 0:
    raise ValueError("kish_effective_sample_size needs at least one weight")
  return float(np.exp(2.0 * _logsumexp(lw) - _logsumexp(2.0 * lw)))


@dataclasses.dataclass(frozen=True)
class OffPolicyEstimate:
  """Estimates of E_{pi_new}[r] and weight diagnostics."""
  ordinary: float  # V_IS
  self_normalized: float  # V_SNIS
  ess: float  # Kish effective sample size
  ess_fraction: float  # ess / B
  max_weight_fraction: float  # largest normalised weight, max_b w_b / sum w


def importance_sampling_estimate(log_w_B: npt.ArrayLike,
                                 rewards_B: npt.ArrayLike) -> OffPolicyEstimate:
  """Ordinary and self-normalised importance-sampling estimates of the new policy's reward.

  See the module docstring for the estimators. Weights are formed as exp(log w - max log w), so
  only the ordinary estimate, which needs the absolute scale exp(max log w), can overflow (to
  +-inf, which then is the honest answer in float64). Example: log_w = log([2, 0.5]) and
  rewards [1, 0] give V_IS = 1.0, V_SNIS = 0.8 and ESS = 6.25 / 4.25.
  """
  lw = correlation.as_float_vector("log_w_B", log_w_B)
  r = correlation.as_float_vector("rewards_B", rewards_B)
  if lw.size != r.size or lw.size == 0:
    raise ValueError(f"log_w_B and rewards_B need equal, non-zero lengths, got {lw.size} and "
                     f"{r.size}")
  m = float(np.max(lw))
  scaled = np.exp(lw - m)  # in (0, 1], the largest is exactly 1
  mean_scaled = float(np.mean(scaled * r))
  with np.errstate(over="ignore"):
    ordinary = (0.0 if mean_scaled == 0 else
                float(np.sign(mean_scaled) * np.exp(m + np.log(abs(mean_scaled)))))
  ess = kish_effective_sample_size(lw)
  return OffPolicyEstimate(ordinary=ordinary,
                           self_normalized=float(np.sum(scaled * r) / np.sum(scaled)), ess=ess,
                           ess_fraction=ess / lw.size,
                           max_weight_fraction=float(1.0 / np.sum(scaled)))
