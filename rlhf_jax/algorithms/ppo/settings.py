"""Static settings of a PPO run (hashable dataclasses, validated once).

Acronyms: PPO = Proximal Policy Optimization; GAE = Generalized Advantage Estimation; KL =
Kullback-Leibler; EMA = exponential moving average; SFT = Supervised Fine-Tuning; EOS =
end-of-sequence. Built from the ml_collections config by `run.settings_from_config`; item numbers
refer to ../shared/PPO_DETAILS.md.
"""
from __future__ import annotations

import dataclasses
import logging

from rlhf_jax import sampling  # noqa: F401  (type annotations)
from rlhf_jax.algorithms.ppo import advantages as advantages_lib
from rlhf_jax.algorithms.ppo import rewards as rewards_lib, update as update_lib

logger = logging.getLogger(__name__)
GUARD_ACTIONS = ("stop", "rollback")


@dataclasses.dataclass(frozen=True)
class GuardConfig:
  """The runtime KL guard: what happens when KL to the reference exceeds a bound (trainer.run)."""
  max_kl: float = 0.0  # bound on KL to the reference (nats per response, k1); 0 disables the guard
  action: str = "stop"  # "stop": raise KLGuardError; "rollback": restore the last good state
  max_rollbacks: int = 3  # rollbacks allowed before the run stops anyway
  rollback_beta_factor: float = 2.0  # beta is multiplied by this after each rollback


@dataclasses.dataclass(frozen=True)
class PPOSettings:
  """Everything static about a run (hashable). Built from the ml_collections config by `run.py`."""
  sampling: sampling.SamplingConfig  # temperature, N samples per prompt, response length S
  reward: rewards_lib.RewardConfig
  update: update_lib.UpdateConfig
  num_prompts: int  # prompts per iteration (B); rows per iteration = B * N
  max_prompt_len: int  # P: prompts are left-padded to this length
  eos_id: int
  pad_id: int
  advantage: str = "gae"  # "gae" | "grpo" | "dr_grpo" | "rloo"
  gamma: float = 1.0  # GAE discount (item 13)
  lam: float = 0.95  # GAE lambda (item 13)
  kl_controller: str = "adaptive"  # "adaptive" | "fixed" (item 10)
  init_beta: float = 0.15  # initial KL coefficient
  kl_target: float = 6.0  # adaptive controller target KL (nats per response)
  kl_horizon: float = 10_000.0  # adaptive controller horizon (responses)
  kl_max_error: float = 0.2  # adaptive controller error clip
  critic_warmup_iterations: int = 0  # iterations that train only the critic (item 8)
  reward_norm_samples: int = 0  # reference samples for the reward gain/bias (item 7; 0: off)
  ema_decay: float = 0.0  # EMA of policy params (item 20; 0: off)
  logprob_chunk_size: int = 0  # > 0: vocabulary-chunked log-probs
  sample_every: int = 0  # write sample completions every this many iterations (0: never)
  num_logged_samples: int = 4  # completions written each time
  checkpoint_every: int = 0  # save a verified state every this many iterations (0: only at the end)
  ptx_batch_size: int = 0  # SFT rows per iteration for PPO-ptx (needs update.ptx_coef > 0)
  guard: GuardConfig = GuardConfig()
  seed: int = 0

  @property
  def rows(self) -> int:
    return self.num_prompts * self.sampling.num_samples

  def validate(self, data_parallel: int = 1) -> "PPOSettings":
    self.sampling.validate()
    self.reward.validate()
    self.update.validate()
    if self.sampling.top_k != 0 or self.sampling.top_p != 1.0:
      raise ValueError("sampling.top_k must be 0 and sampling.top_p 1.0 for PPO: the trainer's log-probs "
                       "(temperature only) must describe the distribution the responses were sampled from")
    if self.sampling.temperature <= 0:
      raise ValueError(f"sampling.temperature must be > 0 for PPO (greedy rollouts have no policy gradient), "
                       f"got {self.sampling.temperature}")
    if self.eos_id == self.pad_id:
      raise ValueError(f"pad id ({self.pad_id}) must differ from the EOS id ({self.eos_id}) (item 3)")
    advantages_lib.get_advantage_fn(self.advantage, gamma=self.gamma, lam=self.lam,
                                    num_samples=self.sampling.num_samples)
    critic = advantages_lib.needs_critic(self.advantage)
    if self.update.kl_in_loss != (self.reward.kl_mode == "loss"):
      raise ValueError(f"reward.kl_mode={self.reward.kl_mode!r} but update.kl_in_loss={self.update.kl_in_loss}: "
                       "the KL goes in the reward (PPO) or in the loss (GRPO), never both and never neither")
    if critic and self.reward.kl_mode == "loss":
      logger.warning("GAE with the KL in the loss: rewards carry no KL penalty (kl_mode='loss')")
    if self.rows % self.update.num_minibatches:
      raise ValueError(f"rows per iteration (num_prompts {self.num_prompts} x num_samples "
                       f"{self.sampling.num_samples}) must be divisible by update.num_minibatches "
                       f"({self.update.num_minibatches})")
    if self.num_prompts % data_parallel or (self.rows // self.update.num_minibatches) % data_parallel:
      raise ValueError(f"num_prompts ({self.num_prompts}) and the minibatch size must be divisible by the "
                       f"data-parallel devices ({data_parallel})")
    if self.guard.action not in GUARD_ACTIONS:
      raise ValueError(f"guard.action must be one of {GUARD_ACTIONS}, got {self.guard.action!r}")
    if self.guard.max_kl < 0:
      raise ValueError(f"guard.max_kl must be >= 0 (0 disables), got {self.guard.max_kl}")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")
    if self.update.ptx_coef > 0 and (self.ptx_batch_size <= 0 or self.ptx_batch_size % self.update.num_minibatches
                                     or (self.ptx_batch_size // self.update.num_minibatches) % data_parallel):
      raise ValueError(f"ptx.batch_size ({self.ptx_batch_size}) must be a positive multiple of the minibatches "
                       f"({self.update.num_minibatches}) x data-parallel devices ({data_parallel}) with ptx.coef > 0")
    return self
