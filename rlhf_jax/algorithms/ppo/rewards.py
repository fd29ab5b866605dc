"""From raw reward-model scores to the reward signal PPO optimises.

Acronyms: PPO = Proximal Policy Optimization; GRPO = Group Relative Policy Optimization; RLOO =
REINFORCE Leave-One-Out; KL = Kullback-Leibler divergence; EOS = end-of-sequence token; LHP =
OpenAI's lm-human-preferences (Ziegler et al. 2019).

The pipeline, in order (each step a switch in `RewardConfig`; PPO_DETAILS.md item numbers):

  1. score = gain * raw + bias                   reward normalisation (item 7): gain and bias fitted
                                                 once so reference-policy samples score mean 0, std 1
                                                 (`fit_reward_normalization`); identity by default.
  2. score = missing_eos_penalty where no EOS    the EOS trick's penalty (item 2): a response that
                                                 never ended is scored by a fixed number (LHP: -1),
                                                 replacing its reward-model score.
  3. score = (score - mu) / sigma                running normalisation (item 12): mean and std of
                                                 every score seen so far (`RunningMoments`).
  4. score = clip(score, -c, c)                  reward clipping (item 12), e.g. c = 10.
  5. kl_mode == "reward" (PPO):                  per-token KL penalty with the score at the last
        r_t = -beta * kl_t + [t = last] * score  token (item 9, `ops.returns.kl_shaped_rewards`);
     kl_mode == "loss" (GRPO):                   the KL goes into the loss instead (item 11), so
        r_t = [t = last] * score                 the rewards carry no KL: never both.
     Critic-free estimators (GRPO/RLOO) use one reward per response instead,
        R = score - beta * sum_t kl_t * [kl_mode == "reward"]          (`sequence_rewards`).
  6. r = whiten(r) over the batch                reward whitening (item 12), optional.

The per-token KL estimate kl_t uses the estimator chosen in the config (k1 = logp - ref_logp by
default, k2 or k3; `rlhf_jax.ops.kl`). All functions are pure; shapes: B rows (responses), S
response tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import ops
from rlhf_jax.ops import reward_processing

KLMode = Literal["reward", "loss"]
KL_MODES = ("reward", "loss")
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """Reward shaping switches (hashable: bound statically into jitted functions)."""

  kl_mode: KLMode = "reward"  # "reward": KL penalty per token (PPO); "loss": KL term in the loss (GRPO)
  kl_estimator: str = "k1"  # per-token KL estimator: "k1" | "k2" | "k3" (rlhf_jax.ops.kl)
  missing_eos_penalty: Optional[float] = -1.0  # score of a response without EOS (None: keep its score)
  running_norm: bool = False  # normalise scores with running mean/std of all scores so far
  running_norm_shift_mean: bool = True  # subtract the running mean (False: only divide by the std)
  clip: Optional[float] = None  # clip processed scores to [-clip, clip] (None: off)
  whiten: bool = False  # whiten the rewards over the batch (token rewards for GAE, scores otherwise)
  whiten_shift_mean: bool = True  # True: the mean stays removed; False: it is added back (TRL)

  def validate(self) -> "RewardConfig":
    if self.kl_mode not in KL_MODES:
      raise ValueError(f"reward.kl_mode must be one of {KL_MODES}, got {self.kl_mode!r}")
    ops.kl.kl_estimator(self.kl_estimator)  # raises naming the choices
    if self.clip is not None and not self.clip > 0:
      raise ValueError(f"reward.clip must be positive (or None to disable), got {self.clip}")
    return self


def per_token_kl(logp_BxS: jax.Array, ref_logp_BxS: jax.Array, mask_BxS: jax.Array,
                 estimator: str = "k1") -> jax.Array:
  """Per-token KL(pi || pi_ref) estimate on response tokens, 0 on padding: [B, S] -> [B, S].

  Example: logp = log 0.5, ref_logp = log 0.25, mask 1, "k1" -> log 2.
  """
  kl_BxS = ops.kl.kl_estimator(estimator)(logp_BxS, ref_logp_BxS)
  return jnp.where(mask_BxS.astype(bool), kl_BxS, 0.0)


def sequence_kl(kl_BxS: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  """KL of each whole response: sum over its tokens ([B, S] -> [B]). LHP's "KL" is its batch mean."""
  return ops.masked_sum(kl_BxS, mask_BxS, axis=1)


def apply_missing_eos_penalty(score_B: jax.Array, ended_with_eos_B: jax.Array,
                              penalty: Optional[float]) -> jax.Array:
  """Replaces the score of every response that did not end with EOS by `penalty` (None: no-op).

  Example: scores [2, 3], ended [True, False], penalty -1 -> [2, -1].
  """
  score_B = score_B.astype(jnp.float32)
  if penalty is None:
    return score_B
  if ended_with_eos_B.shape != score_B.shape:
    raise ValueError(f"apply_missing_eos_penalty: `ended_with_eos_B` shape {ended_with_eos_B.shape} != "
                     f"`score_B` shape {score_B.shape}")
  return jnp.where(ended_with_eos_B.astype(bool), score_B, jnp.float32(penalty))


def fit_reward_normalization(scores: np.ndarray, eps: float = 1e-8) -> tuple[float, float]:
  """(gain, bias) with gain * s + bias having mean 0 and std 1 over `scores` (PPO_DETAILS item 7).

  Fit on a few hundred scores of reference-policy samples before training (LHP measured 256):
  gain = 1 / std, bias = -mean / std (population std). Raises when the scores are constant.
  Example: scores [1, 3] -> gain 1, bias -2.
  """
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 1 or scores.size < 2:
    raise ValueError(f"fit_reward_normalization needs a 1-D array of >= 2 scores, got shape {scores.shape}")
  std = float(np.std(scores))
  if not std > eps:
    raise ValueError(f"fit_reward_normalization: the {scores.size} reference scores are constant "
                     f"({scores[0]}); the reward cannot be normalised to std 1")
  mean = float(np.mean(scores))
  return 1.0 / std, -mean / std


def process_scores(raw_score_B: jax.Array, ended_with_eos_B: jax.Array,
                   moments: reward_processing.RunningMoments, cfg: RewardConfig,
                   gain: jax.Array | float = 1.0, bias: jax.Array | float = 0.0
                   ) -> tuple[jax.Array, reward_processing.RunningMoments, Metrics]:
  """Steps 1-4 of the module docstring: returns (score_B, new running moments, metrics).

  `gain` and `bias` are the fitted reward normalisation (carried in the run state, not the config,
  because they are measured at the start of a run).

  The running moments are updated with this batch's scores (after the EOS penalty) BEFORE they
  normalise it, so the first batch is normalised by its own statistics.
  """
  score_B = gain * raw_score_B.astype(jnp.float32) + bias
  score_B = apply_missing_eos_penalty(score_B, ended_with_eos_B, cfg.missing_eos_penalty)
  if cfg.running_norm:
    moments = reward_processing.running_moments_update(moments, score_B)
    score_B = reward_processing.normalize_with_running_moments(
        score_B, moments, shift_mean=cfg.running_norm_shift_mean)
  if cfg.clip is not None:
    score_B = reward_processing.clip_rewards(score_B, cfg.clip)
  metrics = {"reward/raw_score": jnp.mean(raw_score_B.astype(jnp.float32)),
             "reward/score": jnp.mean(score_B),
             "reward/score_std": jnp.std(score_B)}
  return score_B, moments, metrics


def token_rewards(score_B: jax.Array, kl_BxS: jax.Array, mask_BxS: jax.Array, beta: jax.Array,
                  cfg: RewardConfig) -> tuple[jax.Array, Metrics]:
  """Steps 5-6: per-token rewards [B, S] for GAE, with the KL penalty only when kl_mode == "reward".

    r_t = -beta * kl_t * [kl_mode == "reward"] + [t = last valid token] * score      (then whiten)

  Metrics: "reward/non_score" (mean over rows of the summed KL penalty, -beta * KL) and
  "reward/total" (mean over rows of the summed rewards before whitening: score - beta * KL).
  """
  kl_beta = beta if cfg.kl_mode == "reward" else jnp.zeros_like(beta)
  rewards_BxS = ops.kl_shaped_rewards(score_B, kl_BxS, mask_BxS, kl_beta)
  penalty_B = -kl_beta * sequence_kl(kl_BxS, mask_BxS)
  metrics = {"reward/non_score": jnp.mean(penalty_B),
             "reward/total": jnp.mean(ops.masked_sum(rewards_BxS, mask_BxS, axis=1))}
  if cfg.whiten:
    rewards_BxS = reward_processing.whiten_rewards(rewards_BxS, mask_BxS, shift_mean=cfg.whiten_shift_mean)
  return rewards_BxS, metrics


def sequence_rewards(score_B: jax.Array, kl_BxS: jax.Array, mask_BxS: jax.Array, beta: jax.Array,
                     cfg: RewardConfig) -> tuple[jax.Array, Metrics]:
  """Steps 5-6 for critic-free estimators (GRPO/RLOO): one reward per response [B].

    R = score - beta * sum_t kl_t * [kl_mode == "reward"]          (then whiten over the batch)

  The sequence-level KL penalty is RLOO's form (Ahmadian et al. 2024); with kl_mode == "loss" the
  KL enters the loss instead and R = score. Metrics as in `token_rewards`.
  """
  kl_beta = beta if cfg.kl_mode == "reward" else jnp.zeros_like(beta)
  penalty_B = -kl_beta * sequence_kl(kl_BxS, mask_BxS)
  rewards_B = score_B.astype(jnp.float32) + penalty_B
  metrics = {"reward/non_score": jnp.mean(penalty_B), "reward/total": jnp.mean(rewards_B)}
  if cfg.whiten:
    rewards_B = reward_processing.whiten_rewards(rewards_B, shift_mean=cfg.whiten_shift_mean)
  return rewards_B, metrics
