"""rlhf_jax.algorithms.ppo.experience: shaped rewards, advantages and rollout metrics vs NumPy."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.ppo import advantages, experience, forward, rewards, rollout
from rlhf_jax.ops import reward_processing
from testdata import numpy_references

B, P, S = 4, 3, 5
LENGTHS = np.array([5, 2, 4, 1])
ENDED = np.array([False, True, True, False])


def _rollout_and_forward(seed=0):
  rng = np.random.default_rng(seed)
  mask = (np.arange(S)[None, :] < LENGTHS[:, None]).astype(np.int32)
  inputs = forward.SequenceInputs(prompt_tokens_BxP=jnp.asarray(rng.integers(4, 50, (B, P)), jnp.int32),
                                  prompt_mask_BxP=jnp.ones((B, P), jnp.int32),
                                  response_tokens_BxS=jnp.asarray(rng.integers(4, 50, (B, S)) * mask, jnp.int32),
                                  response_mask_BxS=jnp.asarray(mask))
  ref = -rng.uniform(0.5, 3.0, (B, S)) * mask
  old = (ref + rng.normal(0, 0.4, (B, S))) * mask
  roll = (old + rng.normal(0, 1e-3, (B, S))) * mask
  values = rng.normal(0, 1, (B, S)) * mask
  ro = rollout.Rollout(inputs=inputs, rollout_logp_BxS=jnp.float32(roll), ended_with_eos_B=jnp.asarray(ENDED),
                       lengths_B=jnp.asarray(LENGTHS, jnp.int32))
  fwd = rollout.RolloutForward(old_logp_BxS=jnp.float32(old), entropy_BxS=jnp.float32(np.abs(values)),
                               ref_logp_BxS=jnp.float32(ref), values_BxS=jnp.float32(values))
  return ro, fwd, dict(mask=mask.astype(np.float64), ref=ref, old=old, roll=roll, values=values)


@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_gae_experience_matches_numpy(beta):
  ro, fwd, d = _rollout_and_forward(1)
  raw = np.array([1.0, -2.0, 0.5, 3.0])
  cfg = rewards.RewardConfig(missing_eos_penalty=-1.0)
  build = jax.jit(functools.partial(experience.build_experience, reward_cfg=cfg, use_critic=True,
                                    advantage_fn=advantages.get_advantage_fn("gae", gamma=0.9, lam=0.8)))
  out = build(ro, fwd, jnp.float32(raw), jnp.float32(beta), reward_processing.running_moments_init(),
              jnp.float32(2.0), jnp.float32(0.5))
  mask = d["mask"]
  score = np.where(ENDED, 2.0 * raw + 0.5, -1.0)  # gain/bias, then the missing-EOS penalty
  kl = (d["old"] - d["ref"]) * mask
  r = -beta * kl
  r[np.arange(B), LENGTHS - 1] += score
  adv, ret = numpy_references.gae(r * mask, d["values"], mask, 0.9, 0.8)
  e = out.experience
  np.testing.assert_allclose(out.score_B, score, atol=1e-5)
  np.testing.assert_allclose(e.advantages_BxS, adv, atol=1e-4)
  np.testing.assert_allclose(e.returns_BxS, ret, atol=1e-4)
  np.testing.assert_allclose(e.old_values_BxS, d["values"], atol=1e-6)
  m = out.metrics
  seq_kl = kl.sum(1)
  np.testing.assert_allclose(m["kl/ref"], seq_kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(out.sequence_kl_B, seq_kl, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["reward/score_minus_kl"], (score - beta * seq_kl).mean(), rtol=1e-5)
  np.testing.assert_allclose(m["reward/non_score"], -beta * seq_kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(m["rollout/eos_fraction"], ENDED.mean())
  np.testing.assert_allclose(m["rollout/response_length"], LENGTHS.mean())
  np.testing.assert_allclose(m["returns/mean"], ret[mask > 0].mean(), rtol=1e-5)
  np.testing.assert_allclose(m["returns/var"], ret[mask > 0].var(), rtol=1e-4)
  diff = np.abs(d["roll"] - d["old"])[mask > 0]
  np.testing.assert_allclose(m["rollout/logprob_diff_max"], diff.max(), rtol=1e-4)
  np.testing.assert_allclose(m["rollout/logprob_diff_mean"], diff.mean(), rtol=1e-4)
  np.testing.assert_allclose(m["kl/beta"], beta, rtol=1e-6)


def test_rloo_experience_with_sequence_level_kl():
  ro, fwd, d = _rollout_and_forward(2)
  raw = np.array([1.0, -2.0, 0.5, 3.0])
  cfg = rewards.RewardConfig(missing_eos_penalty=None, kl_estimator="k1")
  out = experience.build_experience(ro, fwd, jnp.float32(raw), jnp.float32(0.2),
                                    reward_processing.running_moments_init(), reward_cfg=cfg, use_critic=False,
                                    advantage_fn=advantages.get_advantage_fn("rloo", num_samples=2))
  seq = raw - 0.2 * ((d["old"] - d["ref"]) * d["mask"]).sum(1)
  g = seq.reshape(2, 2)
  adv = (g - g[:, ::-1]).reshape(-1)  # leave-one-out with N = 2: r_i - r_other
  np.testing.assert_allclose(out.experience.advantages_BxS, adv[:, None] * d["mask"], atol=1e-5)
  assert np.all(np.asarray(out.experience.returns_BxS) == 0) and "returns/mean" not in out.metrics
