"""rlhf_jax.algorithms.ppo.rewards against independent float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.ppo import rewards
from rlhf_jax.ops import reward_processing

B, S = 4, 5
LENGTHS = (5, 3, 1, 4)
ATOL = 2e-6


def _mask():
  return (np.arange(S)[None, :] < np.array(LENGTHS)[:, None]).astype(np.float64)


def _logps(seed=0):
  rng = np.random.default_rng(seed)
  ref = -rng.uniform(0.2, 3.0, (B, S))
  return ref + rng.normal(0.0, 0.5, (B, S)), ref  # policy != reference everywhere


def np_kl(logp, ref, name):
  x = logp - ref
  return {"k1": x, "k2": 0.5 * x ** 2, "k3": np.exp(-x) - 1.0 + x}[name]


def np_token_rewards(score, kl, mask, beta):
  out = -beta * kl * mask
  for b in range(len(score)):
    last = int(np.max(np.nonzero(mask[b])[0]))
    out[b, last] += score[b]
  return out * mask


def np_whiten(x, mask, shift_mean):
  vals = x[mask > 0]
  mean, var = vals.mean(), vals.var()
  out = (x - mean) / np.sqrt(var + 1e-8)
  if not shift_mean:
    out = out + mean
  return out * mask


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_per_token_kl_matches_numpy_and_zeroes_padding(name):
  logp, ref = _logps()
  got = rewards.per_token_kl(jnp.float32(logp), jnp.float32(ref), jnp.asarray(_mask()), name)
  np.testing.assert_allclose(got, np_kl(logp, ref, name) * _mask(), atol=ATOL, rtol=1e-5)
  assert np.all(np.asarray(got)[_mask() == 0] == 0)


@pytest.mark.parametrize("beta", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_token_rewards_put_the_score_at_the_last_token_and_the_kl_everywhere(beta, estimator):
  logp, ref = _logps(1)
  mask = _mask()
  score = np.array([1.5, -0.7, 2.0, 0.25])
  kl = np_kl(logp, ref, estimator) * mask
  cfg = rewards.RewardConfig(kl_estimator=estimator)
  kl_j = rewards.per_token_kl(jnp.float32(logp), jnp.float32(ref), jnp.asarray(mask), estimator)
  got, metrics = rewards.token_rewards(jnp.float32(score), kl_j, jnp.asarray(mask), jnp.float32(beta), cfg)
  expected = np_token_rewards(score, kl, mask, beta)
  np.testing.assert_allclose(got, expected, atol=ATOL, rtol=1e-5)
  np.testing.assert_allclose(metrics["reward/non_score"], np.mean(-beta * kl.sum(1)), atol=ATOL, rtol=1e-5)
  np.testing.assert_allclose(metrics["reward/total"], np.mean(expected.sum(1)), atol=ATOL, rtol=1e-5)


def test_kl_in_the_loss_means_no_kl_in_the_reward():
  logp, ref = _logps(2)
  mask = _mask()
  score = np.array([1.0, 2.0, 3.0, 4.0])
  kl = rewards.per_token_kl(jnp.float32(logp), jnp.float32(ref), jnp.asarray(mask), "k3")
  cfg = rewards.RewardConfig(kl_mode="loss", kl_estimator="k3")
  got, metrics = rewards.token_rewards(jnp.float32(score), kl, jnp.asarray(mask), jnp.float32(0.5), cfg)
  np.testing.assert_allclose(got, np_token_rewards(score, np.zeros((B, S)), mask, 0.0), atol=ATOL)
  assert float(metrics["reward/non_score"]) == 0.0
  seq, _ = rewards.sequence_rewards(jnp.float32(score), kl, jnp.asarray(mask), jnp.float32(0.5), cfg)
  np.testing.assert_allclose(seq, score, atol=ATOL)


@pytest.mark.parametrize("beta", [0.1, 0.4])
def test_sequence_rewards_subtract_the_summed_kl(beta):
  logp, ref = _logps(3)
  mask = _mask()
  score = np.array([0.5, 1.0, -1.0, 2.0])
  kl = rewards.per_token_kl(jnp.float32(logp), jnp.float32(ref), jnp.asarray(mask), "k1")
  got, _ = rewards.sequence_rewards(jnp.float32(score), kl, jnp.asarray(mask), jnp.float32(beta),
                                    rewards.RewardConfig())
  np.testing.assert_allclose(got, score - beta * ((logp - ref) * mask).sum(1), atol=1e-5)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whitening_of_token_rewards(shift_mean):
  logp, ref = _logps(4)
  mask = _mask()
  score = np.array([3.0, -1.0, 0.5, 2.0])
  cfg = rewards.RewardConfig(whiten=True, whiten_shift_mean=shift_mean)
  kl = rewards.per_token_kl(jnp.float32(logp), jnp.float32(ref), jnp.asarray(mask), "k1")
  got, _ = rewards.token_rewards(jnp.float32(score), kl, jnp.asarray(mask), jnp.float32(0.2), cfg)
  raw = np_token_rewards(score, (logp - ref) * mask, mask, 0.2)
  np.testing.assert_allclose(got, np_whiten(raw, mask, shift_mean), atol=1e-5)


def test_missing_eos_penalty_replaces_the_score():
  score = jnp.float32([2.0, 3.0, -4.0])
  ended = jnp.array([True, False, False])
  np.testing.assert_allclose(rewards.apply_missing_eos_penalty(score, ended, -1.0), [2.0, -1.0, -1.0])
  np.testing.assert_allclose(rewards.apply_missing_eos_penalty(score, ended, -7.5), [2.0, -7.5, -7.5])
  np.testing.assert_allclose(rewards.apply_missing_eos_penalty(score, ended, None), [2.0, 3.0, -4.0])
  with pytest.raises(ValueError, match="ended_with_eos_B"):
    rewards.apply_missing_eos_penalty(score, ended[:2], -1.0)


def test_fit_reward_normalization_gives_mean_zero_std_one():
  scores = np.random.default_rng(0).normal(3.0, 2.5, 300)
  gain, bias = rewards.fit_reward_normalization(scores)
  normed = gain * scores + bias
  assert abs(normed.mean()) < 1e-9 and abs(normed.std() - 1.0) < 1e-9
  assert rewards.fit_reward_normalization(np.array([1.0, 3.0])) == pytest.approx((1.0, -2.0))
  with pytest.raises(ValueError, match="constant"):
    rewards.fit_reward_normalization(np.ones(10))


def np_process(raw_batches, ended_batches, gain, bias, penalty, running, shift_mean, clip):
  """Float64 reference of steps 1-4 over successive batches (running stats over all seen scores)."""
  seen, outs = [], []
  for raw, ended in zip(raw_batches, ended_batches):
    s = gain * raw + bias
    if penalty is not None:
      s = np.where(ended, s, penalty)
    if running:
      seen.extend(s.tolist())
      all_s = np.array(seen)
      s = ((s - all_s.mean()) if shift_mean else s) / (all_s.std() + 1e-8)
    if clip is not None:
      s = np.clip(s, -clip, clip)
    outs.append(s)
  return outs


@pytest.mark.parametrize("gain,bias,penalty,running,shift_mean,clip", [
    (1.0, 0.0, None, False, True, None),
    (0.5, -1.0, -1.0, False, True, None),
    (2.0, 0.3, -2.0, True, True, None),
    (1.0, 0.0, -1.0, True, False, 0.8),
    (3.0, 1.0, None, False, True, 2.5),
])
def test_process_scores_matches_numpy(gain, bias, penalty, running, shift_mean, clip):
  rng = np.random.default_rng(5)
  raws = [rng.normal(1.0, 2.0, 6) for _ in range(3)]
  endeds = [rng.random(6) < 0.6 for _ in range(3)]
  cfg = rewards.RewardConfig(missing_eos_penalty=penalty, running_norm=running,
                             running_norm_shift_mean=shift_mean, clip=clip)
  moments = reward_processing.running_moments_init()
  process = jax.jit(rewards.process_scores, static_argnames="cfg")
  expected = np_process(raws, endeds, gain, bias, penalty, running, shift_mean, clip)
  for raw, ended, exp in zip(raws, endeds, expected):
    got, moments, metrics = process(jnp.float32(raw), jnp.asarray(ended), moments, cfg=cfg,
                                    gain=jnp.float32(gain), bias=jnp.float32(bias))
    np.testing.assert_allclose(got, exp, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(metrics["reward/raw_score"], raw.mean(), rtol=1e-5)


def test_reward_config_validation_names_the_field():
  with pytest.raises(ValueError, match="reward.kl_mode"):
    rewards.RewardConfig(kl_mode="both").validate()
  with pytest.raises(ValueError, match="unknown KL estimator"):
    rewards.RewardConfig(kl_estimator="k4").validate()
  with pytest.raises(ValueError, match="reward.clip"):
    rewards.RewardConfig(clip=0.0).validate()
