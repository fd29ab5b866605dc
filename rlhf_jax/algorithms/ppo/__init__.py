"""PPO (Proximal Policy Optimization) with GAE (Generalized Advantage Estimation) and KL
(Kullback-Leibler) control, plus the critic-free GRPO (Group Relative Policy Optimization) and
RLOO (REINFORCE Leave-One-Out): the four-model RLHF loop (policy, value, reference, reward).

  forward     forward passes over [prompt; response]: policy log-probs, values, reward scores
  rollout     jitted sampling with the EOS trick; old / reference log-probs and values
  rewards     score processing, per-token KL penalty (k1/k2/k3), KL in reward XOR in loss
  advantages  GAE (vmapped reverse scan) or group baselines, chosen at a factory
  experience  rewards + advantages + rollout metrics as one jitted function
  update      epochs x minibatches as one lax.scan over policy and value TrainStates
  state       policy / value TrainStates, frozen reference, reward sources
  settings    PPOSettings / GuardConfig: the static, validated settings of a run
  tf_adam     TF1-style Adam (lm-human-preferences' optimiser) as a config switch
  trainer     the host loop: rollout -> score -> advantages -> update, metrics, KL guard
  run         train_ppo(config, workdir) and validate_and_derive (configs/ppo.py, configs/grpo.py)
"""
from rlhf_jax.algorithms.ppo import (advantages, experience, forward, rewards, rollout, settings, state, tf_adam,
                                     trainer, update)
from rlhf_jax.algorithms.ppo.advantages import AdvantageInputs, get_advantage_fn, needs_critic
from rlhf_jax.algorithms.ppo.experience import ExperienceResult, build_experience
from rlhf_jax.algorithms.ppo.forward import SequenceInputs, policy_logprobs, reward_scores, values
from rlhf_jax.algorithms.ppo.rewards import RewardConfig, fit_reward_normalization
from rlhf_jax.algorithms.ppo.rollout import Rollout, RolloutForward, eos_trick, evaluate, generate
from rlhf_jax.algorithms.ppo.state import (PPOState, create_policy_state, create_value_state, frozen_copy,
                                           reward_model_source, text_reward_source)
from rlhf_jax.algorithms.ppo.trainer import GuardConfig, KLGuardError, PPOSettings, PPOTrainer, PromptSet
from rlhf_jax.algorithms.ppo.update import Experience, UpdateConfig, UpdateResult, ppo_loss, ppo_update
