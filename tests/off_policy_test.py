"""Tests for rlhf_jax.evaluation.off_policy."""
import numpy as np
import pytest

from rlhf_jax.evaluation import off_policy as ope

REWARDS = np.array([1.0, 0.0, 2.0, -1.0, 0.5])
PI_OLD = np.array([0.3, 0.3, 0.2, 0.1, 0.1])


def test_docstring_example():
  est = ope.importance_sampling_estimate(np.log([2.0, 0.5]), [1.0, 0.0])
  assert est.ordinary == pytest.approx(1.0)
  assert est.self_normalized == pytest.approx(0.8)
  assert est.ess == pytest.approx(6.25 / 4.25)
  assert est.max_weight_fraction == pytest.approx(0.8)


def test_recovers_expected_reward_on_categorical_example():
  pi_new = np.array([0.2, 0.1, 0.4, 0.1, 0.2])
  rng = np.random.default_rng(0)
  actions = rng.choice(5, size=20000, p=PI_OLD)
  log_w = np.log(pi_new[actions]) - np.log(PI_OLD[actions])
  est = ope.importance_sampling_estimate(log_w, REWARDS[actions])
  truth = float(pi_new @ REWARDS)
  w = pi_new[actions] / PI_OLD[actions]  # direct weights, independent of the log-space code
  assert est.ordinary == pytest.approx(np.mean(w * REWARDS[actions]), rel=1e-12)
  assert est.self_normalized == pytest.approx(np.sum(w * REWARDS[actions]) / np.sum(w), rel=1e-12)
  assert est.ess == pytest.approx(w.sum() ** 2 / np.sum(w**2), rel=1e-12)
  assert est.ordinary == pytest.approx(truth, abs=0.05)
  assert est.self_normalized == pytest.approx(truth, abs=0.05)
  assert 0.5 < est.ess_fraction < 1.0
  # The population ESS fraction is 1 / E_old[w^2].
  assert est.ess_fraction == pytest.approx(1 / np.sum(pi_new**2 / PI_OLD), abs=0.02)


def test_ess_is_full_on_policy_and_low_when_policies_are_far():
  rng = np.random.default_rng(1)
  actions = rng.choice(5, size=5000, p=PI_OLD)
  same = ope.importance_sampling_estimate(np.zeros(5000), REWARDS[actions])
  assert same.ess == pytest.approx(5000) and same.ordinary == pytest.approx(same.self_normalized)
  far = np.array([0.001, 0.001, 0.001, 0.001, 0.996])  # mass where the old policy rarely goes
  est = ope.importance_sampling_estimate(np.log(far[actions]) - np.log(PI_OLD[actions]), REWARDS[actions])
  assert est.ess_fraction < 0.15
  assert est.self_normalized == pytest.approx(far @ REWARDS, abs=0.1)


def test_sequence_log_ratio_masks_and_is_overflow_safe():
  rng = np.random.default_rng(2)
  new, old = rng.normal(size=(3, 6)) - 2, rng.normal(size=(3, 6)) - 2
  mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], float)
  new[0, 4] = -np.inf  # padding garbage must not leak through the mask
  log_w = ope.sequence_log_ratio(new, old, mask)
  ref = [sum(new[b, s] - old[b, s] for s in range(6) if mask[b, s]) for b in range(3)]
  np.testing.assert_allclose(log_w, ref)
  big = np.array([800.0, 799.0, 0.0])  # exp(800) overflows float64
  est = ope.importance_sampling_estimate(big, [1.0, 3.0, 5.0])
  e = np.exp(-1.0)
  assert est.self_normalized == pytest.approx((1 + 3 * e) / (1 + e), rel=1e-9)
  assert est.ess == pytest.approx((1 + e) ** 2 / (1 + e**2), rel=1e-9)
  assert est.ordinary == np.inf
  with pytest.raises(ValueError, match="must share one"):
    ope.sequence_log_ratio(new, old, mask[:, :3])
