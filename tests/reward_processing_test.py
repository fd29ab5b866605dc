"""Tests for rlhf_jax.ops.reward_processing against float64 NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.ops import reward_processing as rp


def _tokens(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(3.0, 2.0, (4, 5))
  mask = np.ones((4, 5))
  mask[1, 3:] = 0.0
  mask[3, 1:] = 0.0
  x[mask == 0] = 1e4  # Garbage at masked positions must not matter.
  return x, mask


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_rewards_matches_numpy(shift_mean):
  x, mask = _tokens()
  out = rp.whiten_rewards(jnp.asarray(x, jnp.float32), jnp.asarray(mask), shift_mean=shift_mean)
  valid = x[mask > 0]
  expected = (valid - valid.mean()) / np.sqrt(valid.var() + 1e-8)
  if not shift_mean:
    expected = expected + valid.mean()
  np.testing.assert_allclose(np.asarray(out)[mask > 0], expected, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(out)[mask == 0] == 0)
  np.testing.assert_allclose(np.asarray(out)[mask > 0].std(), 1.0, rtol=1e-4)


def test_whiten_scores_without_mask():
  np.testing.assert_allclose(rp.whiten_rewards(jnp.array([1.0, 3.0])), [-1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(rp.whiten_rewards(jnp.array([1.0, 3.0]), shift_mean=False),
                             [1.0, 3.0], rtol=1e-6)
  with pytest.raises(ValueError, match="mask"):
    rp.whiten_rewards(jnp.zeros(3), jnp.ones(2))


def test_clip_rewards():
  np.testing.assert_allclose(rp.clip_rewards(jnp.array([-20.0, -3.0, 4.0, 11.0]), 10.0),
                             [-10.0, -3.0, 4.0, 10.0])
  with pytest.raises(ValueError, match="clip"):
    rp.clip_rewards(jnp.zeros(2), 0.0)


def test_running_moments_equal_statistics_of_everything_seen():
  rng = np.random.default_rng(1)
  batches = [rng.normal(5.0, 3.0, (3, 4)), rng.normal(-2.0, 0.5, (2, 4)),
             rng.normal(1.0, 1.0, (4, 4))]
  masks = [np.ones((3, 4)), (rng.uniform(size=(2, 4)) > 0.3) * 1.0, np.zeros((4, 4))]
  masks[1][0, 0] = 1.0
  update = jax.jit(rp.running_moments_update)
  state = rp.running_moments_init()
  seen = []
  for x, m in zip(batches, masks):
    state = update(state, jnp.asarray(x, jnp.float32), jnp.asarray(m))
    seen.extend(x[m > 0])
    seen_np = np.asarray(seen)
    np.testing.assert_allclose(state.count, len(seen_np))
    np.testing.assert_allclose(state.mean, seen_np.mean(), rtol=1e-5)
    np.testing.assert_allclose(rp.running_moments_std(state), seen_np.std(), rtol=1e-5)
    np.testing.assert_allclose(rp.running_moments_std(state, ddof=1), seen_np.std(ddof=1),
                               rtol=1e-5)


def test_running_moments_empty_state():
  state = rp.running_moments_init()
  assert float(rp.running_moments_std(state)) == 0.0
  state = rp.running_moments_update(state, jnp.array([2.0]))
  assert float(rp.running_moments_std(state, ddof=1)) == 0.0
  np.testing.assert_allclose(state.mean, 2.0)


@pytest.mark.parametrize("shift_mean,clip", [(True, None), (False, None), (True, 1.0)])
def test_normalize_with_running_moments(shift_mean, clip):
  rng = np.random.default_rng(2)
  x = rng.normal(4.0, 2.0, 16)
  state = rp.running_moments_update(rp.running_moments_init(), jnp.asarray(x, jnp.float32))
  out = rp.normalize_with_running_moments(jnp.asarray(x, jnp.float32), state,
                                          shift_mean=shift_mean, clip=clip)
  expected = ((x - x.mean()) if shift_mean else x) / (x.std() + 1e-8)
  if clip is not None:
    expected = np.clip(expected, -clip, clip)
    assert np.any(np.abs(expected) == clip)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
