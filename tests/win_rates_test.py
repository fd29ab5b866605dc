"""Tests for rlhf_jax.evaluation.win_rates."""
import numpy as np
import pytest

from rlhf_jax.evaluation import win_rates as wr


def test_point_estimate_counts_ties_half():
  res = wr.win_rate([1, 2, 3], [0, 2, 5])
  assert res.win_rate == pytest.approx(0.5)
  assert (res.num_wins, res.num_ties, res.num_losses) == (1, 1, 1)
  tol = wr.win_rate([1.0, 2.0, 3.0], [0.95, 2.5, 5.0], tie_tolerance=0.1)
  assert (tol.num_wins, tol.num_ties, tol.num_losses) == (0, 1, 2)
  assert tol.win_rate == pytest.approx(0.5 / 3)


def test_bootstrap_interval_matches_brute_force_resampling():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 4, size=300).astype(float)
  b = rng.integers(0, 4, size=300).astype(float) - 0.3 * (rng.random(300) < 0.5)
  res = wr.win_rate(a, b, num_bootstrap=20000, confidence=0.9, seed=1)
  outcome = np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))
  assert res.win_rate == pytest.approx(outcome.mean())
  idx = np.random.default_rng(2).integers(0, 300, size=(20000, 300))
  brute = outcome[idx].mean(axis=1)
  lo, hi = np.quantile(brute, [0.05, 0.95])
  assert res.ci_low == pytest.approx(lo, abs=0.006) and res.ci_high == pytest.approx(hi, abs=0.006)
  # Close to the normal approximation, and about +-1.645 standard errors wide.
  se = outcome.std() / np.sqrt(300)
  assert res.ci_high - res.ci_low == pytest.approx(2 * 1.645 * se, rel=0.05)
  assert res.ci_low < res.win_rate < res.ci_high


def test_seeded_and_confidence_dependent():
  a, b = np.arange(50.0), np.arange(50.0)[::-1]
  r1, r2 = wr.win_rate(a, b, seed=3), wr.win_rate(a, b, seed=3)
  assert r1 == r2
  narrow = wr.win_rate(a, b, confidence=0.5, seed=3)
  assert r1.ci_low < narrow.ci_low <= narrow.ci_high < r1.ci_high


def test_errors_are_named():
  with pytest.raises(ValueError, match="equal lengths"):
    wr.win_rate([1.0], [1.0, 2.0])
  with pytest.raises(ValueError, match="scores_b_B must be finite"):
    wr.win_rate([1.0], [np.nan])
  with pytest.raises(ValueError, match="confidence must lie in"):
    wr.win_rate([1.0], [0.0], confidence=1.5)
