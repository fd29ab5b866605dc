"""Advantage estimators for the RLHF loop, chosen by name at a factory.

Acronyms: GAE = Generalized Advantage Estimation (Schulman et al. 2016); GRPO = Group Relative
Policy Optimization (Shao et al. 2024); Dr. GRPO = GRPO Done Right (Liu et al. 2025); RLOO =
REINFORCE Leave-One-Out (Ahmadian et al. 2024).

  "gae"      per-token: needs a critic (values) and per-token rewards; GAE is written for one
             sequence as a reverse scan (`rlhf_jax.ops.returns.gae_single`) and vmapped over rows.
             Returns (advantages_BxS, returns_BxS); the returns are the value targets.
  "grpo",    critic-free: one reward per response; rows are B prompts x N samples (the N samples
  "dr_grpo", of a prompt adjacent, as the sampler emits them); the group baseline
  "rloo"     (`rlhf_jax.ops.advantages`) gives one advantage per response, spread over its tokens.
             The returns are zeros (there is no critic to fit).

Every estimator has the signature `fn(inputs: AdvantageInputs) -> (adv_BxS, returns_BxS)`.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from rlhf_jax import ops

CRITIC_ESTIMATORS = ("gae",)
GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo")


class AdvantageInputs(NamedTuple):
  """What the estimators read (each uses a subset)."""
  mask_BxS: jax.Array  # 1 on response tokens
  token_rewards_BxS: Optional[jax.Array] = None  # GAE: KL-shaped per-token rewards
  values_BxS: Optional[jax.Array] = None  # GAE: critic values V(s_t) of each response token's state
  sequence_rewards_B: Optional[jax.Array] = None  # group estimators: one reward per response


AdvantageFn = Callable[[AdvantageInputs], tuple[jax.Array, jax.Array]]


def gae_advantages(inputs: AdvantageInputs, *, gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
  """GAE over response tokens (PPO_DETAILS item 13: gamma 1, lambda 0.95): (adv_BxS, returns_BxS)."""
  if inputs.token_rewards_BxS is None or inputs.values_BxS is None:
    raise ValueError("gae_advantages needs `token_rewards_BxS` and `values_BxS` (a critic)")
  adv_BxS, returns_BxS = ops.gae(inputs.token_rewards_BxS, inputs.values_BxS, inputs.mask_BxS, gamma, lam)
  return jax.lax.stop_gradient(adv_BxS), jax.lax.stop_gradient(returns_BxS)


def group_advantages(inputs: AdvantageInputs, *, name: str,
                     num_samples: int) -> tuple[jax.Array, jax.Array]:
  """GRPO / Dr. GRPO / RLOO advantages over groups of `num_samples` adjacent rows: (adv_BxS, zeros)."""
  if inputs.sequence_rewards_B is None:
    raise ValueError(f"{name} advantages need `sequence_rewards_B` (one reward per response)")
  rewards_B = inputs.sequence_rewards_B
  rows = rewards_B.shape[0]
  if rows % num_samples:
    raise ValueError(f"{name}: {rows} responses are not whole groups of num_samples={num_samples}")
  adv_BxN = ops.get_advantage_estimator(name)(rewards_B.reshape(rows // num_samples, num_samples))
  adv_BxS = ops.advantages.sequence_to_token_advantages(adv_BxN.reshape(rows), inputs.mask_BxS)
  return jax.lax.stop_gradient(adv_BxS), jnp.zeros_like(adv_BxS)


def get_advantage_fn(name: str, *, gamma: float = 1.0, lam: float = 0.95,
                     num_samples: int = 1) -> AdvantageFn:
  """The estimator registered under `name` with its hyper-parameters bound."""
  if name == "gae":
    return functools.partial(gae_advantages, gamma=gamma, lam=lam)
  if name in GROUP_ESTIMATORS:
    min_n = 2 if name in ("grpo", "rloo") else 1
    if num_samples < min_n:
      raise ValueError(f"advantage estimator {name!r} needs >= {min_n} samples per prompt "
                       f"(sampling.num_samples), got {num_samples}")
    return functools.partial(group_advantages, name=name, num_samples=num_samples)
  raise ValueError(f"unknown advantage estimator {name!r}; choose one of "
                   f"{sorted(CRITIC_ESTIMATORS + GROUP_ESTIMATORS)}")


def needs_critic(name: str) -> bool:
  """Whether the estimator needs a value network."""
  return name in CRITIC_ESTIMATORS
