"""Scores + rollout forward passes -> the `Experience` batch the PPO update consumes (jitted once).

Acronyms: PPO = Proximal Policy Optimization; KL = Kullback-Leibler; GAE = Generalized Advantage
Estimation; EOS = end-of-sequence.

  score_B   = process_scores(raw scores)                      (rewards.py: norm, EOS penalty, clip)
  kl_BxS    = KL estimate(old_logp, ref_logp) on the mask     (rewards.per_token_kl)
  critic:   rewards_BxS = -beta kl + score at the last token; (adv, returns) = GAE(rewards, values)
  no critic: R_B = score (- beta * sum kl); adv = group baseline (GRPO / RLOO)

and the rollout metrics of PPO_DETAILS "What to log": KL to the reference, beta, raw score and
score - beta * KL, entropy, returns mean/var, response length, EOS fraction and the
rollout-vs-trainer log-prob difference. All are computed here, from fixed rollout quantities.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax import ops
from rlhf_jax.algorithms.ppo import advantages as advantages_lib
from rlhf_jax.algorithms.ppo import rewards as rewards_lib
from rlhf_jax.algorithms.ppo import rollout as rollout_lib
from rlhf_jax.algorithms.ppo.update import Experience
from rlhf_jax.ops import reward_processing

Metrics = dict[str, jax.Array]


class ExperienceResult(NamedTuple):
  experience: Experience
  reward_moments: reward_processing.RunningMoments
  metrics: Metrics
  sequence_kl_B: jax.Array  # per-response KL estimate (sum over tokens), for the sample log
  score_B: jax.Array  # processed score per response


def build_experience(rollout: rollout_lib.Rollout, fwd: rollout_lib.RolloutForward, raw_score_B: jax.Array,
                     beta: jax.Array, moments: reward_processing.RunningMoments,
                     reward_gain: jax.Array | float = 1.0, reward_bias: jax.Array | float = 0.0, *,
                     reward_cfg: rewards_lib.RewardConfig, advantage_fn: advantages_lib.AdvantageFn,
                     use_critic: bool) -> ExperienceResult:
  """Shapes rewards, computes advantages and the rollout metrics (bind keywords, then jit)."""
  inputs = rollout.inputs
  mask_BxS = inputs.response_mask_BxS
  mask_f_BxS = mask_BxS.astype(jnp.float32)
  score_B, moments, metrics = rewards_lib.process_scores(raw_score_B, rollout.ended_with_eos_B, moments,
                                                         reward_cfg, reward_gain, reward_bias)
  kl_BxS = rewards_lib.per_token_kl(fwd.old_logp_BxS, fwd.ref_logp_BxS, mask_BxS, reward_cfg.kl_estimator)
  seq_kl_B = rewards_lib.sequence_kl(kl_BxS, mask_BxS)
  if use_critic:
    rewards_BxS, reward_metrics = rewards_lib.token_rewards(score_B, kl_BxS, mask_BxS, beta, reward_cfg)
    adv_in = advantages_lib.AdvantageInputs(mask_BxS=mask_BxS, token_rewards_BxS=rewards_BxS,
                                            values_BxS=fwd.values_BxS)
    old_values_BxS = fwd.values_BxS
  else:
    seq_rewards_B, reward_metrics = rewards_lib.sequence_rewards(score_B, kl_BxS, mask_BxS, beta, reward_cfg)
    adv_in = advantages_lib.AdvantageInputs(mask_BxS=mask_BxS, sequence_rewards_B=seq_rewards_B)
    old_values_BxS = jnp.zeros_like(mask_f_BxS)
  adv_BxS, returns_BxS = advantage_fn(adv_in)
  metrics.update(reward_metrics)

  # KL to the reference always with k1 (the log-ratio) for comparability across estimators.
  k1_B = ops.masked_sum(fwd.old_logp_BxS - fwd.ref_logp_BxS, mask_BxS, axis=1)
  lengths_f_B = rollout.lengths_B.astype(jnp.float32)
  metrics.update({
      "kl/ref": jnp.mean(k1_B),
      "kl/ref_estimator": jnp.mean(seq_kl_B),
      "kl/ref_per_token": ops.masked_mean(fwd.old_logp_BxS - fwd.ref_logp_BxS, mask_BxS),
      "kl/beta": jnp.asarray(beta, jnp.float32),
      "reward/score_minus_kl": jnp.mean(score_B - beta * k1_B),
      "policy/rollout_entropy": ops.masked_mean(fwd.entropy_BxS, mask_BxS),
      "rollout/response_length": jnp.mean(lengths_f_B),
      "rollout/response_length_max": jnp.max(lengths_f_B),
      "rollout/eos_fraction": jnp.mean(rollout.ended_with_eos_B.astype(jnp.float32)),
      "advantages/mean": ops.masked_mean(adv_BxS, mask_BxS),
      "advantages/std": jnp.sqrt(ops.masked_var(adv_BxS, mask_BxS)),
  })
  if use_critic:
    metrics.update({"returns/mean": ops.masked_mean(returns_BxS, mask_BxS),
                    "returns/var": ops.masked_var(returns_BxS, mask_BxS),
                    "value/rollout_mean": ops.masked_mean(old_values_BxS, mask_BxS)})
  metrics.update(rollout_lib.rollout_trainer_logprob_metrics(rollout.rollout_logp_BxS, fwd.old_logp_BxS,
                                                             mask_BxS))
  experience = Experience(inputs=inputs, mask_BxS=mask_BxS, old_logp_BxS=fwd.old_logp_BxS,
                          ref_logp_BxS=fwd.ref_logp_BxS, advantages_BxS=adv_BxS, returns_BxS=returns_BxS,
                          old_values_BxS=old_values_BxS, rollout_logp_BxS=rollout.rollout_logp_BxS)
  return ExperienceResult(experience=experience, reward_moments=moments, metrics=metrics,
                          sequence_kl_B=k1_B, score_B=score_B)
