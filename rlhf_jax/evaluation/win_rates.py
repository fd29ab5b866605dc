"""Win rate of policy A against policy B from paired scores, with a bootstrap confidence interval.

Each prompt b has a score for A's response and for B's (from a reward model or a judge). The
outcome is 1 if A's score is higher by more than `tie_tolerance`, 1/2 if they are within it and 0
otherwise; the win rate is the mean outcome. The confidence interval is the percentile bootstrap
(Efron & Tibshirani 1993) over prompts.

Shape letter: B prompts (pairs).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import correlation


@dataclasses.dataclass(frozen=True)
class WinRate:
  """Point estimate, percentile-bootstrap interval and the outcome counts."""
  win_rate: float
  ci_low: float
  ci_high: float
  confidence: float
  num_wins: int
  num_ties: int
  num_losses: int


def pairwise_outcomes(scores_a_B: npt.ArrayLike, scores_b_B: npt.ArrayLike,
                      tie_tolerance: float = 0.0) -> np.ndarray:
  """Returns outcome_B in {0, 0.5, 1}: 1 when a - b > tie_tolerance, 0.5 when |a - b| <= it."""
  a = correlation.as_float_vector("scores_a_B", scores_a_B)
  b = correlation.as_float_vector("scores_b_B", scores_b_B)
  if a.size != b.size:
    raise ValueError(f"scores_a_B and scores_b_B must have equal lengths, got {a.size} and "
                     f"{b.size}")
  if tie_tolerance < 0:
    raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
  diff = a - b
  return np.where(diff > tie_tolerance, 1.0, np.where(diff < -tie_tolerance, 0.0, 0.5))


def win_rate(scores_a_B: npt.ArrayLike, scores_b_B: npt.ArrayLike, *, tie_tolerance: float = 0.0,
             num_bootstrap: int = 10_000, confidence: float = 0.95, seed: int = 0) -> WinRate:
  """Win rate of A over B, ties counted half, with a seeded percentile-bootstrap interval.

    win_rate = (wins + ties / 2) / B.

  Because an outcome takes only three values, resampling B prompts with replacement is the same
  as drawing (wins, ties, losses) ~ Multinomial(B, observed fractions); this draws the counts
  directly, which is exact and costs O(num_bootstrap) rather than O(num_bootstrap * B).
  The interval is the [(1 - confidence) / 2, (1 + confidence) / 2] quantiles of the resampled
  win rates. Example: scores_a = [1, 2, 3], scores_b = [0, 2, 5] gives win rate 0.5.
  """
  outcome_B = pairwise_outcomes(scores_a_B, scores_b_B, tie_tolerance)
  n = outcome_B.size
  if n == 0:
    raise ValueError("win_rate needs at least one pair")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
  counts = np.array([np.sum(outcome_B == 1.0), np.sum(outcome_B == 0.5), np.sum(outcome_B == 0.0)])
  rng = np.random.default_rng(seed)
  draws = rng.multinomial(n, counts / n, size=num_bootstrap)
  boot = (draws[:, 0] + 0.5 * draws[:, 1]) / n
  lo, hi = np.quantile(boot, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
  return WinRate(win_rate=float(np.mean(outcome_B)), ci_low=float(lo), ci_high=float(hi),
                 confidence=confidence, num_wins=int(counts[0]), num_ties=int(counts[1]),
                 num_losses=int(counts[2]))
