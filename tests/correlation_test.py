"""Tests for rlhf_jax.evaluation.correlation; scipy.stats is the independent reference."""
import numpy as np
import pytest
from scipy import stats

from rlhf_jax.evaluation import correlation as corr


def _tied_data(seed, n=40):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 8, size=n).astype(float)  # many ties
  y = np.round(0.5 * x + rng.normal(size=n), 0)
  return x, y


def test_average_ranks():
  np.testing.assert_array_equal(corr.average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
  x, _ = _tied_data(0)
  np.testing.assert_allclose(corr.average_ranks(x), stats.rankdata(x, method="average"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy_with_ties(seed):
  x, y = _tied_data(seed)
  assert corr.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
  assert corr.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
  assert corr.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y, variant="b")[0], abs=1e-12)


def test_identities_and_degenerate_inputs():
  x = np.array([1.0, 2.0, 3.0, 4.0])
  assert corr.spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone, not linear
  assert corr.pearson(x, np.exp(x)) < 0.99
  assert corr.kendall_tau(x, -x) == pytest.approx(-1.0)
  assert np.isnan(corr.pearson(x, np.ones(4)))
  assert np.isnan(corr.spearman(x, np.ones(4)))
  assert np.isnan(corr.kendall_tau(x, np.ones(4)))
  with pytest.raises(ValueError, match="equal lengths"):
    corr.pearson(x, x[:3])
  with pytest.raises(ValueError, match="x_B must be finite; entry 2"):
    corr.spearman([1.0, 2.0, np.inf], [1.0, 2.0, 3.0])
