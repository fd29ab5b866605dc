"""Tests for rlhf_jax.evaluation.calibration against loop-based references."""
import numpy as np
import pytest

from rlhf_jax.evaluation import calibration as cal


def _reference_uniform(probs, labels, num_bins):
  """ECE with bins found by scanning the edges (not by flooring)."""
  edges = np.linspace(0, 1, num_bins + 1)
  total, n = 0.0, len(probs)
  for m in range(num_bins):
    upper_ok = (lambda p: p <= edges[m + 1]) if m == num_bins - 1 else (lambda p: p < edges[m + 1])
    members = [(p, y) for p, y in zip(probs, labels) if p >= edges[m] and upper_ok(p)]
    if members:
      conf = sum(p for p, _ in members) / len(members)
      freq = sum(y for _, y in members) / len(members)
      total += len(members) / n * abs(freq - conf)
  return total


def _skewed(seed, n=400):
  rng = np.random.default_rng(seed)
  p_true = rng.random(n)
  labels = (rng.random(n) < p_true).astype(float)
  return p_true**3, labels, p_true  # over-confident towards 0


def test_docstring_example():
  d = cal.reliability_diagram([0.1, 0.15, 0.9], [0, 1, 1], num_bins=2)
  np.testing.assert_allclose(d.confidence, [0.125, 0.9])
  np.testing.assert_allclose(d.frequency, [0.5, 1.0])
  np.testing.assert_array_equal(d.count, [2, 1])
  assert d.ece == pytest.approx((2 * 0.375 + 0.1) / 3)
  assert d.mce == pytest.approx(0.375)


@pytest.mark.parametrize("num_bins", [1, 5, 10, 15])
def test_uniform_ece_matches_reference(num_bins):
  probs, labels, _ = _skewed(0)
  probs = np.concatenate([probs, [0.0, 1.0, 0.2, 0.4]])  # edges, including p = 1
  labels = np.concatenate([labels, [0, 1, 1, 0]])
  assert cal.expected_calibration_error(probs, labels, num_bins) == pytest.approx(
      _reference_uniform(probs, labels, num_bins), abs=1e-12)
  assert cal.reliability_diagram(probs, labels, num_bins).count.sum() == probs.size


def test_quantile_bins_have_equal_mass():
  probs, labels, _ = _skewed(1, n=103)
  d = cal.reliability_diagram(probs, labels, num_bins=10, strategy="quantile")
  assert set(d.count.tolist()) == {10, 11} and d.count.sum() == 103
  order = np.argsort(probs, kind="stable")
  ref = 0.0
  for idx in np.array_split(order, 10):
    ref += idx.size / 103 * abs(labels[idx].mean() - probs[idx].mean())
  assert d.ece == pytest.approx(ref, abs=1e-12)
  assert np.all(d.bin_lower <= d.confidence) and np.all(d.confidence <= d.bin_upper)
  assert np.all(d.bin_upper[:-1] <= d.bin_lower[1:])


def test_ece_separates_calibrated_from_skewed_and_top_label():
  probs, labels, p_true = _skewed(2, n=4000)
  assert cal.expected_calibration_error(p_true, labels) < 0.03
  assert cal.expected_calibration_error(probs, labels) > 0.15
  # Top-label view of a symmetric example: confidence 0.8 on both sides, 80% right.
  p = np.array([0.8] * 5 + [0.2] * 5)
  y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
  d = cal.reliability_diagram(p, y, num_bins=10, top_label=True)
  assert d.count[8] == 10 and d.frequency[8] == pytest.approx(0.8) and d.ece == pytest.approx(0.0)
  assert cal.expected_calibration_error(p, y, num_bins=10) == pytest.approx(0.0)


def test_empty_bins_are_nan_and_errors_are_named():
  d = cal.reliability_diagram([0.05, 0.95], [0, 1], num_bins=4)
  assert np.isnan(d.confidence[1]) and d.count[1] == 0
  with pytest.raises(ValueError, match="strategy must be one of"):
    cal.reliability_diagram([0.5], [1], strategy="equal")
  with pytest.raises(ValueError, match="num_bins must be >= 1"):
    cal.reliability_diagram([0.5], [1], num_bins=0)
