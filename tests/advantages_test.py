"""Tests for rlhf_jax.ops.advantages (GRPO, Dr. GRPO, RLOO) against float64 NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.ops import advantages

B, N = 3, 5


def _scores(seed=0):
  return np.random.default_rng(seed).normal(0.5, 2.0, (B, N))


def np_grpo(scores, scale_by_std=True, ddof=1, eps=1e-6):
  out = np.zeros_like(scores)
  for b, group in enumerate(scores):
    centred = group - group.mean()
    out[b] = centred / (group.std(ddof=ddof) + eps) if scale_by_std else centred
  return out


def np_rloo(scores):
  out = np.zeros_like(scores)
  for b, group in enumerate(scores):
    for i in range(len(group)):
      others = np.delete(group, i)
      out[b, i] = group[i] - others.mean()
  return out


@pytest.mark.parametrize("kw", [dict(), dict(ddof=0), dict(eps=0.5), dict(scale_by_std=False)])
def test_grpo_matches_numpy(kw):
  s = _scores()
  out = advantages.grpo_advantages(jnp.asarray(s, jnp.float32), **kw)
  np.testing.assert_allclose(out, np_grpo(s, **kw), rtol=1e-5, atol=1e-6)


def test_grpo_options_matter():
  s = jnp.asarray(_scores(), jnp.float32)
  base = np.asarray(advantages.grpo_advantages(s))
  for kw in [dict(ddof=0), dict(eps=0.5), dict(scale_by_std=False)]:
    assert np.max(np.abs(np.asarray(advantages.grpo_advantages(s, **kw)) - base)) > 1e-3, kw


def test_rloo_matches_numpy_and_sums_to_zero():
  s = _scores(1)
  out = advantages.rloo_advantages(jnp.asarray(s, jnp.float32))
  np.testing.assert_allclose(out, np_rloo(s), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out).sum(axis=1), np.zeros(B), atol=1e-5)
  # Identity: RLOO = N / (N - 1) * (Dr. GRPO advantage).
  np.testing.assert_allclose(out, N / (N - 1) * np_grpo(s, scale_by_std=False), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(advantages.rloo_advantages(jnp.array([[1.0, 2.0, 6.0]])),
                             [[-3.0, -1.5, 4.5]], rtol=1e-6)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
def test_constant_group_gives_zero_without_nan(name):
  s = np.stack([np.full(N, 7.0), _scores()[0], np.zeros(N)])
  fn = advantages.get_advantage_estimator(name)
  out = np.asarray(jax.jit(fn)(jnp.asarray(s, jnp.float32)))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[0], np.zeros(N))
  np.testing.assert_array_equal(out[2], np.zeros(N))
  assert np.max(np.abs(out[1])) > 0.1


def test_factory_and_gae_hint():
  s = jnp.asarray(_scores(), jnp.float32)
  np.testing.assert_allclose(advantages.get_advantage_estimator("dr_grpo")(s),
                             np_grpo(_scores(), scale_by_std=False), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="returns.gae"):
    advantages.get_advantage_estimator("gae")
  with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
    advantages.get_advantage_estimator("ppo")


def test_gradients():
  with jax.enable_x64(True):
    s = jnp.asarray(_scores(), jnp.float64)
    check_grads(jax.jit(advantages.grpo_advantages), (s,), order=1, modes=("rev",))
    check_grads(jax.jit(advantages.rloo_advantages), (s,), order=1, modes=("rev",))


def test_sequence_to_token_advantages():
  mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)
  out = advantages.sequence_to_token_advantages(jnp.array([2.0, -1.0, 5.0]), jnp.asarray(mask))
  np.testing.assert_array_equal(out, [[2, 2, 0], [-1, 0, 0], [0, 0, 0]])
  with pytest.raises(ValueError, match="adv_B"):
    advantages.sequence_to_token_advantages(jnp.zeros(2), jnp.asarray(mask))


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"scores_BxN.*\[B, N\]"):
    advantages.grpo_advantages(jnp.zeros(4))
  with pytest.raises(ValueError, match="at least 2 samples"):
    advantages.rloo_advantages(jnp.zeros((3, 1)))
  with pytest.raises(ValueError, match="at least 2 samples"):
    advantages.grpo_advantages(jnp.zeros((3, 1)))  # Unbiased std needs N >= 2.
