"""Tests for rlhf_jax.evaluation.calibration_maps (Platt scaling, isotonic regression)."""
import json

import numpy as np
import pytest
from scipy import optimize

from rlhf_jax.evaluation import calibration
from rlhf_jax.evaluation import calibration_maps as maps


def _logistic_data(seed, n, a, b):
  rng = np.random.default_rng(seed)
  x = rng.normal(scale=1.5, size=n)
  y = (rng.random(n) < 1 / (1 + np.exp(-(a * x + b)))).astype(float)
  return x, y


def _scipy_platt(x, t):
  def nll(w):
    z = w[0] * x + w[1]
    return np.sum(np.logaddexp(0, z) - t * z)
  return optimize.minimize(nll, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x


def test_platt_recovers_known_parameters():
  x, y = _logistic_data(0, 20000, a=2.0, b=-0.5)
  fit = maps.fit_platt(x, y)
  assert fit.a == pytest.approx(2.0, abs=0.1)
  assert fit.b == pytest.approx(-0.5, abs=0.07)


def test_platt_matches_independent_optimiser_with_and_without_target_smoothing():
  x, y = _logistic_data(1, 300, a=-1.3, b=0.4)
  np.testing.assert_allclose([*vars(maps.fit_platt(x, y, l2=0.0)).values()], _scipy_platt(x, y), atol=1e-5)
  n_pos, n_neg = y.sum(), y.size - y.sum()
  t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
  smoothed = maps.fit_platt(x, y, l2=0.0, target_smoothing=True)
  np.testing.assert_allclose([smoothed.a, smoothed.b], _scipy_platt(x, t), atol=1e-5)
  assert abs(smoothed.a - maps.fit_platt(x, y, l2=0.0).a) > 1e-4  # the option changes the answer


def test_platt_separable_data_stays_finite_and_serialises():
  fit = maps.fit_platt([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
  assert np.isfinite(fit.a) and fit.a > 5
  restored = maps.PlattScaling.from_dict(json.loads(json.dumps(fit.to_dict())))
  assert restored == fit
  np.testing.assert_allclose(restored(np.array([0.3, -40.0, 40.0])), fit([0.3, -40.0, 40.0]))
  assert np.all(np.isfinite(fit(np.array([-1e6, 1e6]))))
  with pytest.raises(ValueError, match="not a Platt scaling state"):
    maps.PlattScaling.from_dict({"kind": "isotonic"})


def test_pav_matches_scipy_isotonic_regression():
  rng = np.random.default_rng(2)
  x = rng.permutation(50).astype(float)  # distinct inputs
  y = 0.05 * x + rng.normal(size=50)
  w = rng.uniform(0.5, 2.0, size=50)
  fit = maps.fit_isotonic(x, y, weights_B=w)
  order = np.argsort(x)
  ref = optimize.isotonic_regression(y[order], weights=w[order]).x
  np.testing.assert_allclose(fit(x[order]), ref, atol=1e-12)
  dec = maps.fit_isotonic(x, y, increasing=False)
  ref_dec = optimize.isotonic_regression(y[order], increasing=False).x
  np.testing.assert_allclose(dec(x[order]), ref_dec, atol=1e-12)


def test_isotonic_pools_ties_interpolates_and_extrapolates_flat():
  fit = maps.fit_isotonic([0.0, 1.0, 1.0, 2.0, 3.0], [0.0, 1.0, 0.0, 0.2, 1.0])
  # x=1 pools to 0.5; then 0.5 > 0.2 pools x in {1, 2} to (0.5 * 2 + 0.2) / 3 = 0.4.
  np.testing.assert_allclose(fit([0.0, 1.0, 2.0, 3.0]), [0.0, 0.4, 0.4, 1.0])
  np.testing.assert_allclose(fit([0.5, 2.5, -5.0, 9.0]), [0.2, 0.7, 0.0, 1.0])
  assert fit.x_knots == (0.0, 1.0, 2.0, 3.0)


def test_isotonic_is_monotone_and_improves_ece_on_skewed_scores():
  rng = np.random.default_rng(3)
  p_true = rng.random(6000)
  labels = (rng.random(6000) < p_true).astype(float)
  skewed = p_true**3
  calib, test = slice(0, 3000), slice(3000, None)
  iso = maps.fit_isotonic(skewed[calib], labels[calib])
  grid = np.linspace(-0.5, 1.5, 401)
  assert np.all(np.diff(iso(grid)) >= 0)
  before = calibration.expected_calibration_error(skewed[test], labels[test])
  after = calibration.expected_calibration_error(iso(skewed[test]), labels[test])
  assert before > 0.15 and after < 0.05, (before, after)
  restored = maps.IsotonicRegression.from_dict(json.loads(json.dumps(iso.to_dict())))
  np.testing.assert_array_equal(restored(skewed[test]), iso(skewed[test]))
  # Platt on the logit of the skewed score also helps, less flexibly.
  logit = np.log(skewed / (1 - skewed))
  platt = maps.fit_platt(logit[calib], labels[calib])
  assert calibration.expected_calibration_error(platt(logit[test]), labels[test]) < before / 2


def test_isotonic_errors_are_named():
  with pytest.raises(ValueError, match="weights_B must be positive; entry 1"):
    maps.fit_isotonic([0.0, 1.0], [0.0, 1.0], weights_B=[1.0, 0.0])
  with pytest.raises(ValueError, match="strictly increasing x_knots"):
    maps.IsotonicRegression.from_dict({"kind": "isotonic", "x_knots": [1.0, 0.0], "y_knots": [0.0, 1.0]})
