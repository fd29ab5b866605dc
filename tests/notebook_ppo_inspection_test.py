"""Tests for rlhf_jax.notebooks.ppo_inspection: the session, the token-level rollout view, KL control.

The rollout view is checked against float64 NumPy recomputations of the per-token KL estimators,
the KL-shaped rewards and GAE (gamma 1, lambda 0.95) from the returned log-probs and values, with a
reference and a critic that differ from the policy (so every term is non-zero).
"""
import jax
import numpy as np
import pytest

from rlhf_jax.notebooks import environment, ppo_inspection
from testdata import numpy_references


@pytest.fixture(scope="module")
def session(tmp_path_factory):
  config = environment.load_config("ppo", "test", {"reward.source": "gold"})
  return ppo_inspection.build_ppo_session(config, tmp_path_factory.mktemp("ppo") / "ppo")


def test_rollout_at_iteration_zero_has_no_kl(session):
  view = ppo_inspection.inspect_rollout(session, session.state, jax.random.key(0))
  s = session.trainer.settings
  assert view.iteration == 0 and view.mask_BxS.shape == (s.rows, s.sampling.max_new_tokens)
  assert np.all(view.k1_BxS == 0.0) and np.all(view.k3_BxS == 0.0)
  np.testing.assert_array_equal(view.logp_BxS, view.ref_logp_BxS)
  assert np.all(view.values_BxS == 0.0)  # value.init "policy": zero head
  # Without KL the only reward is the score, at each response's last token.
  last = view.mask_BxS.sum(axis=1) - 1
  expected = np.zeros_like(view.rewards_BxS)
  expected[np.arange(s.rows), last] = view.score_B
  np.testing.assert_allclose(view.rewards_BxS, expected, atol=1e-6)
  assert [len(t) for t in view.token_texts] == view.mask_BxS.sum(axis=1).tolist()
  assert len(view.prompts) == len(view.responses) == s.rows
  assert view.metrics["kl/ref"] == 0.0


def test_rollout_matches_numpy_with_a_different_reference_and_critic(session):
  state = session.state
  ref = jax.tree.map(lambda x: x * 1.1, session.ref_params)
  value = state.value.replace(params=jax.tree.map(lambda x: x + 0.05, state.value.params))
  view = ppo_inspection.inspect_rollout(session, state.replace(value=value), jax.random.key(1), ref_params=ref)
  mask = view.mask_BxS.astype(bool)
  k1 = np.where(mask, view.logp_BxS - view.ref_logp_BxS, 0.0)
  assert np.abs(k1).max() > 1e-3 and np.abs(view.values_BxS).max() > 1e-3
  np.testing.assert_allclose(view.k1_BxS, k1, atol=1e-6)
  np.testing.assert_allclose(view.k3_BxS, np.where(mask, np.expm1(-k1) + k1, 0.0), atol=1e-5)
  assert np.all(view.k3_BxS[mask] >= 0.0)
  beta = view.beta
  assert beta == pytest.approx(session.config.kl.init_beta)
  rewards = -beta * k1
  rewards[np.arange(mask.shape[0]), mask.sum(axis=1) - 1] += view.score_B
  np.testing.assert_allclose(view.rewards_BxS, rewards, atol=1e-5)
  adv, returns = numpy_references.gae(view.rewards_BxS, view.values_BxS, mask, gamma=1.0, lam=0.95)
  np.testing.assert_allclose(view.advantages_BxS, adv, atol=1e-4)
  np.testing.assert_allclose(view.returns_BxS, returns, atol=1e-4)
  table = view.token_rows(0)
  assert len(table) == mask[0].sum() and table[0]["k1"] == pytest.approx(k1[0, 0], abs=1e-6)


def test_run_iterations_moves_the_policy(session):
  result = ppo_inspection.run_iterations(session, 1, state=jax.tree.map(lambda x: x.copy(), session.state))
  assert [h["step"] for h in result.history] == [1] and np.isfinite(result.history[0]["loss/total"])
  assert (session.workdir / "metrics.jsonl").is_file()
  view = ppo_inspection.inspect_rollout(session, result.state, jax.random.key(2))
  assert view.iteration == 1 and np.abs(view.k1_BxS).max() > 0.0


def test_session_errors(tmp_path):
  config = environment.load_config("ppo", "test", {"init.allow_random_init": False})
  with pytest.raises(ValueError, match="init.policy_artifact is empty"):
    ppo_inspection.build_ppo_session(config, tmp_path / "a")
  config = environment.load_config("ppo", "test", {"value.init": "reward_model"})  # source is "gold"
  with pytest.raises(ValueError, match="value.init='reward_model' needs reward.source"):
    ppo_inspection.build_ppo_session(config, tmp_path / "b")


def _numpy_controller(kls, beta, target, horizon, max_error, n):
  out = [beta]
  for kl in kls:
    beta = beta * (1.0 + np.clip(kl / target - 1.0, -max_error, max_error) * n / horizon)
    out.append(beta)
  return np.asarray(out)


def test_kl_controller_trajectory():
  kls = [9.0, 6.0, 0.0, 30.0, 5.5]
  betas = ppo_inspection.kl_controller_trajectory(kls, init_beta=0.1, target=6.0, horizon=1000.0,
                                                  max_error=0.2, batch_size=500)
  np.testing.assert_allclose(betas, _numpy_controller(kls, 0.1, 6.0, 1000.0, 0.2, 500), rtol=1e-6)
  assert betas[1] == pytest.approx(0.11, rel=1e-6)  # the ops.kl_control docstring example
  betas = ppo_inspection.kl_controller_trajectory(kls, init_beta=0.3, target=2.0, horizon=64.0,
                                                  max_error=0.5, batch_size=16)
  np.testing.assert_allclose(betas, _numpy_controller(kls, 0.3, 2.0, 64.0, 0.5, 16), rtol=1e-6)
  fixed = ppo_inspection.kl_controller_trajectory(kls, controller="fixed", init_beta=0.2, batch_size=8)
  np.testing.assert_allclose(fixed, np.full(6, 0.2), rtol=1e-7)
  with pytest.raises(ValueError, match="needs target= and horizon="):
    ppo_inspection.kl_controller_trajectory(kls, init_beta=0.1, batch_size=8)
