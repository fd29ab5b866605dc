"""Tests for rlhf_jax.ops.returns (GAE, discounted returns, KL-shaped rewards) vs NumPy loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.ops import returns
from testdata import numpy_references

B, S = 4, 7


def _data(seed=0):
  """Ragged prefix masks (one of length 1) and a hole in row 3; garbage at masked positions."""
  rng = np.random.default_rng(seed)
  mask = np.zeros((B, S))
  for b, n in enumerate((7, 4, 1, 6)):
    mask[b, :n] = 1.0
  mask[3, 2] = 0.0  # A hole: e.g. a tool-output token inside a response.
  rewards = rng.normal(0.0, 1.0, (B, S))
  values = rng.normal(0.0, 1.0, (B, S))
  # Garbage at masked positions must not matter.
  rewards[mask == 0] = 1e3
  values[mask == 0] = -1e3
  return rewards, values, mask


def np_discounted(rewards, mask, gamma):
  out = np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    g = 0.0
    for t in reversed(range(rewards.shape[1])):
      if mask[b, t]:
        g = rewards[b, t] + gamma * g
        out[b, t] = g
  return out


def _f32(*xs):
  return tuple(jnp.asarray(x, jnp.float32) for x in xs)


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.5])
@pytest.mark.parametrize("lam", [1.0, 0.95, 0.6, 0.0])
def test_gae_matches_numpy_loop(gamma, lam):
  rewards, values, mask = _data()
  adv, ret = returns.gae(*_f32(rewards, values, mask), gamma, lam)
  adv_np, ret_np = numpy_references.gae(rewards, values, mask, gamma, lam)
  np.testing.assert_allclose(adv, adv_np, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, ret_np, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(adv)[mask == 0] == 0) and np.all(np.asarray(ret)[mask == 0] == 0)


def test_gamma_and_lambda_both_matter():
  rewards, values, mask = _data()
  base, _ = returns.gae(*_f32(rewards, values, mask), 0.9, 0.8)
  for gamma, lam in [(0.8, 0.8), (0.9, 0.9)]:
    other, _ = returns.gae(*_f32(rewards, values, mask), gamma, lam)
    assert np.max(np.abs(np.asarray(other) - np.asarray(base))) > 1e-3


@pytest.mark.parametrize("gamma", [1.0, 0.7])
def test_lambda_one_is_return_minus_value(gamma):
  rewards, values, mask = _data()
  adv, ret = returns.gae(*_f32(rewards, values, mask), gamma, 1.0)
  disc = returns.discounted_returns(*_f32(rewards, mask), gamma)
  np.testing.assert_allclose(adv, np.where(mask > 0, np.asarray(disc) - values, 0), atol=1e-5)
  np.testing.assert_allclose(ret, disc, atol=1e-5)


@pytest.mark.parametrize("gamma", [1.0, 0.7])
def test_lambda_zero_is_td_residual(gamma):
  rewards, values, mask = _data(1)
  adv, _ = returns.gae(*_f32(rewards, values, mask), gamma, 0.0)
  for b in range(B):
    idx = np.flatnonzero(mask[b])
    next_values = np.append(values[b, idx[1:]], 0.0)  # The next VALID token; 0 after the last.
    td = rewards[b, idx] + gamma * next_values - values[b, idx]
    np.testing.assert_allclose(np.asarray(adv)[b, idx], td, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_discounted_returns_match_numpy(gamma):
  rewards, _, mask = _data(2)
  out = returns.discounted_returns(*_f32(rewards, mask), gamma)
  np.testing.assert_allclose(out, np_discounted(rewards, mask, gamma), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      returns.discounted_returns_single(*_f32([1.0, 0.0, 2.0], [1, 1, 1]), 0.5), [1.5, 1.0, 2.0])


def test_gae_single_docstring_example_and_empty_mask():
  adv, ret = returns.gae_single(*_f32([0.0, 1.0], [0.5, 0.5], [1, 1]), 1.0, 1.0)
  np.testing.assert_allclose(adv, [0.5, 0.5])
  np.testing.assert_allclose(ret, [1.0, 1.0])
  adv, ret = returns.gae_single(*_f32([1.0, 2.0], [3.0, 4.0], [0, 0]), 1.0, 0.9)
  np.testing.assert_array_equal(adv, [0, 0])
  np.testing.assert_array_equal(ret, [0, 0])


def test_gae_gradient_matches_finite_differences():
  """check_grads checks the reverse scan's derivative against finite differences."""
  rewards, values, mask = _data()
  with jax.enable_x64(True):
    r, v, m = (jnp.asarray(x, jnp.float64) for x in (rewards, values, mask))
    check_grads(jax.jit(lambda r, v: returns.gae(r, v, m, 0.9, 0.7)[0]), (r, v), order=1,
                modes=("rev",))


def test_gae_jits_with_traced_gamma_lambda():
  rewards, values, mask = _data()
  fn = jax.jit(returns.gae)
  adv, _ = fn(*_f32(rewards, values, mask), jnp.float32(0.9), jnp.float32(0.6))
  np.testing.assert_allclose(adv, numpy_references.gae(rewards, values, mask, 0.9, 0.6)[0], rtol=1e-5,
                             atol=1e-5)


# ---------------------------------------------------------------- KL-shaped rewards
def np_kl_shaped(score, kl, mask, beta):
  out = np.where(mask > 0, -beta * kl, 0.0)
  for b in range(len(score)):
    idx = np.flatnonzero(mask[b])
    if len(idx):
      out[b, idx[-1]] += score[b]
  return out


@pytest.mark.parametrize("beta", [0.0, 0.05, 0.3])
def test_kl_shaped_rewards_match_numpy(beta):
  rng = np.random.default_rng(4)
  _, _, mask = _data()
  mask[2] = 0.0  # An empty response: its score is dropped.
  score = rng.normal(0.0, 2.0, B)
  kl = rng.normal(0.0, 0.5, (B, S))
  kl[mask == 0] = 1e3
  out = returns.kl_shaped_rewards(*_f32(score, kl, mask), beta)
  np.testing.assert_allclose(out, np_kl_shaped(score, kl, mask, beta), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      returns.kl_shaped_rewards_single(*_f32(2.0, [0.1, 0.3, 7.0], [1, 1, 0]), 0.5),
      [-0.05, 1.85, 0.0], rtol=1e-6)


def test_kl_shaped_rewards_feed_gae():
  """Score at the last token with gamma = lam = 1 and zero values: every advantage is the return."""
  _, _, mask = _data()
  score = np.array([1.0, -2.0, 0.5, 3.0])
  rewards = returns.kl_shaped_rewards(*_f32(score, np.zeros((B, S)), mask), 0.1)
  adv, _ = returns.gae(rewards, jnp.zeros((B, S)), jnp.asarray(mask), 1.0, 1.0)
  np.testing.assert_allclose(adv, mask * score[:, None], rtol=1e-6)


def test_bad_shapes_raise():
  x = jnp.zeros((B, S))
  with pytest.raises(ValueError, match="values_BxS"):
    returns.gae(x, jnp.zeros((B, S - 1)), x, 1.0, 0.95)
  with pytest.raises(ValueError, match="vmap"):
    returns.gae_single(x, x, x, 1.0, 0.95)
  with pytest.raises(ValueError, match="score_B"):
    returns.kl_shaped_rewards(jnp.zeros(B + 1), x, x, 0.1)
