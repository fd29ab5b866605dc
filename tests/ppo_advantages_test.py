"""rlhf_jax.algorithms.ppo.advantages: the factory's estimators against float64 NumPy references."""
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.ppo import advantages
from testdata import numpy_references

B, S = 4, 6
LENGTHS = (6, 4, 1, 3)


def _mask():
  return (np.arange(S)[None, :] < np.array(LENGTHS)[:, None]).astype(np.float64)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (0.99, 0.0), (0.8, 1.0)])
def test_gae_matches_numpy(gamma, lam):
  rng = np.random.default_rng(0)
  mask = _mask()
  rewards, values = rng.normal(size=(B, S)) * mask, rng.normal(size=(B, S))
  fn = advantages.get_advantage_fn("gae", gamma=gamma, lam=lam)
  adv, ret = fn(advantages.AdvantageInputs(mask_BxS=jnp.asarray(mask), token_rewards_BxS=jnp.float32(rewards),
                                           values_BxS=jnp.float32(values)))
  exp_adv, exp_ret = numpy_references.gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(adv, exp_adv, atol=1e-5)
  np.testing.assert_allclose(ret, exp_ret, atol=1e-5)


def test_gae_with_lambda_one_is_return_minus_value():
  rng = np.random.default_rng(1)
  mask = _mask()
  rewards, values = rng.normal(size=(B, S)) * mask, rng.normal(size=(B, S))
  adv, _ = advantages.get_advantage_fn("gae", gamma=1.0, lam=1.0)(advantages.AdvantageInputs(
      mask_BxS=jnp.asarray(mask), token_rewards_BxS=jnp.float32(rewards), values_BxS=jnp.float32(values)))
  returns = np.cumsum(rewards[:, ::-1], axis=1)[:, ::-1]  # undiscounted reward-to-go
  np.testing.assert_allclose(adv, (returns - values) * mask, atol=1e-5)


def np_group(rewards, n, name):
  g = rewards.reshape(-1, n)
  centred = g - g.mean(1, keepdims=True)
  if name == "grpo":
    out = centred / (g.std(1, ddof=1, keepdims=True) + 1e-6)
  elif name == "dr_grpo":
    out = centred
  else:
    out = g - (g.sum(1, keepdims=True) - g) / (n - 1)
  return out.reshape(-1)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("n", [2, 4])
def test_group_estimators_match_numpy_and_fill_response_tokens(name, n):
  rows = 8
  rng = np.random.default_rng(2)
  rewards = rng.normal(size=rows)
  mask = (np.arange(5)[None, :] < rng.integers(1, 6, rows)[:, None]).astype(np.float64)
  fn = advantages.get_advantage_fn(name, num_samples=n)
  adv, ret = fn(advantages.AdvantageInputs(mask_BxS=jnp.asarray(mask), sequence_rewards_B=jnp.float32(rewards)))
  np.testing.assert_allclose(adv, np_group(rewards, n, name)[:, None] * mask, atol=1e-5)
  assert np.all(np.asarray(ret) == 0)


def test_factory_errors_are_clear():
  with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
    advantages.get_advantage_fn("ppo")
  with pytest.raises(ValueError, match="needs >= 2 samples per prompt"):
    advantages.get_advantage_fn("rloo", num_samples=1)
  with pytest.raises(ValueError, match="not whole groups"):
    advantages.get_advantage_fn("grpo", num_samples=3)(advantages.AdvantageInputs(
        mask_BxS=jnp.ones((4, 2)), sequence_rewards_B=jnp.zeros(4)))
  with pytest.raises(ValueError, match="a critic"):
    advantages.get_advantage_fn("gae")(advantages.AdvantageInputs(mask_BxS=jnp.ones((4, 2))))
  assert advantages.needs_critic("gae") and not advantages.needs_critic("rloo")
