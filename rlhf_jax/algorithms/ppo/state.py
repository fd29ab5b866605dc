"""The four models of the RLHF loop: policy and value TrainStates, frozen reference, reward source.

Acronyms: RLHF = Reinforcement Learning from Human Feedback; SFT = Supervised Fine-Tuning; PPO =
Proximal Policy Optimization; EOS = end-of-sequence.

  policy     a TrainState (trained), started from the SFT parameters (PPO_DETAILS item 21).
  value      a SEPARATE `ScalarModel` TrainState (item 8), initialised from the reward model's
             parameters ("reward_model"), or from the policy's trunk with a zero head ("policy"),
             so its first values are exactly 0. Absent for critic-free estimators (GRPO/RLOO).
  reference  the frozen SFT parameters: a plain pytree, never donated or optimised.
  reward     a `RewardSource` (`rlhf_jax.algorithms.reward_source`): a frozen reward model scored
             in-process at the last real token (`reward_model_source`), the lab's gold reward, a
             verifier or any Python function (`TextRewardFn`).

The states are created directly into their shardings (`train_state.create_train_state`).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from rlhf_jax import models, sharding
from rlhf_jax.algorithms import train_state as train_state_lib
from rlhf_jax.algorithms.ppo import forward
from rlhf_jax.algorithms.reward_source import TextRewardFn, TokenRewardFn
from rlhf_jax.ops import kl_control, reward_processing

PyTree = Any
VALUE_INITS = ("reward_model", "policy")


@flax.struct.dataclass
class PPOState:
  """Everything a PPO run carries between iterations (checkpointed as one pytree)."""
  policy: train_state_lib.TrainState
  value: Optional[train_state_lib.TrainState]  # None for critic-free runs
  kl: kl_control.KLControllerState  # current KL coefficient beta
  reward_moments: reward_processing.RunningMoments  # running score statistics (item 12)
  reward_gain: jax.Array  # float32: reward normalisation gain (item 7; 1 when off)
  reward_bias: jax.Array  # float32: reward normalisation bias (0 when off)
  policy_ema: Optional[PyTree]  # exponential moving average of the policy params (None when off)
  iteration: jax.Array  # int32: completed PPO iterations (rollout + update)

  @property
  def step(self) -> jax.Array:
    return self.iteration


def create_policy_state(model: models.CausalLM, tx: optax.GradientTransformation, mesh: Mesh,
                        rules: sharding.LogicalRules, key: jax.Array, params: Optional[PyTree] = None
                        ) -> tuple[train_state_lib.TrainState, train_state_lib.TrainState]:
  """Policy TrainState (and its shardings); `params` (e.g. the SFT checkpoint) replace the random init.

  The optimiser state is initialised for the given params, so Adam starts from zero moments.
  """
  init_fn = functools.partial(models.init_params, model)
  state, shardings = train_state_lib.create_train_state(init_fn, tx, mesh, rules, key)
  if params is not None:
    check_same_structure(params, state.params, "policy params")
    params = jax.device_put(params, shardings.params)
    state = jax.jit(lambda p: train_state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                         opt_state=tx.init(p)),
                    out_shardings=shardings)(params)
  return state, shardings


def check_same_structure(given: PyTree, expected: PyTree, what: str) -> None:
  """Raises ValueError naming the first leaf whose path or shape differs."""
  given_leaves = dict(jax.tree_util.tree_leaves_with_path(given))
  expected_leaves = dict(jax.tree_util.tree_leaves_with_path(expected))
  if set(given_leaves) != set(expected_leaves):
    missing = sorted(jax.tree_util.keystr(k) for k in set(expected_leaves) - set(given_leaves))
    extra = sorted(jax.tree_util.keystr(k) for k in set(given_leaves) - set(expected_leaves))
    raise ValueError(f"{what} do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
  for path, leaf in expected_leaves.items():
    if tuple(np.shape(given_leaves[path])) != tuple(leaf.shape):
      raise ValueError(f"{what}: {jax.tree_util.keystr(path)} has shape {np.shape(given_leaves[path])}, "
                       f"the model expects {leaf.shape}")


def value_params_from(value_abstract: PyTree, init: str, *, reward_params: Optional[PyTree] = None,
                      policy_params: Optional[PyTree] = None) -> PyTree:
  """Initial critic parameters (item 8).

  "reward_model": a copy of the reward model's parameters (trunk and head);
  "policy":       the policy's decoder trunk with the scalar head zeroed (kernel and bias), so every
                  initial value is exactly 0.
  """
  if init == "reward_model":
    if reward_params is None:
      raise ValueError("value.init='reward_model' needs the reward model's parameters; the reward source "
                       "is not a reward model, so use value.init='policy'")
    check_same_structure(reward_params, value_abstract, "reward-model params (value init)")
    return reward_params
  if init == "policy":
    if policy_params is None:
      raise ValueError("value.init='policy' needs the policy parameters")
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), value_abstract)
    out = models.scalar_params_from_lm(policy_params, zeros)
    return {**out, "head": jax.tree.map(jnp.zeros_like, out["head"])}
  raise ValueError(f"value.init must be one of {VALUE_INITS}, got {init!r}")


def create_value_state(value_model: models.ScalarModel, tx: optax.GradientTransformation, mesh: Mesh,
                       rules: sharding.LogicalRules, key: jax.Array, *, init: str,
                       reward_params: Optional[PyTree] = None, policy_params: Optional[PyTree] = None
                       ) -> tuple[train_state_lib.TrainState, train_state_lib.TrainState]:
  """The critic's TrainState (and shardings), initialised as `value_params_from` describes."""
  init_fn = functools.partial(models.init_params, value_model)
  abstract = train_state_lib.abstract_train_state(init_fn, tx, mesh, rules, key)
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  if reward_params is not None and init == "reward_model":
    # The reward model may have been loaded onto one device (or another mesh): place it first, since
    # jit refuses arguments committed to other devices than its output shardings.
    check_same_structure(reward_params, abstract.params, "reward-model params (value init)")
    reward_params = jax.device_put(reward_params, shardings.params)
  params = jax.jit(functools.partial(value_params_from, abstract.params, init),
                   out_shardings=shardings.params)(reward_params=reward_params, policy_params=policy_params)
  state = jax.jit(lambda p: train_state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                       opt_state=tx.init(p)),
                  out_shardings=shardings)(params)
  return state, shardings


def frozen_copy(params: PyTree, shardings: Optional[PyTree] = None) -> PyTree:
  """A separate copy of `params` (the reference policy): never aliased with a donated TrainState."""
  if shardings is None:
    return jax.tree.map(lambda x: jnp.array(x, copy=True), params)
  return jax.jit(lambda p: jax.tree.map(lambda x: x + jnp.zeros((), x.dtype), p), out_shardings=shardings)(params)


def reward_model_source(reward_model: models.ScalarModel, params: PyTree, *, name: str = "reward_model",
                        mesh: Optional[Mesh] = None) -> TokenRewardFn:
  """A frozen reward model as a reward source: a jitted score at the last real token of
  [prompt; response], fed token ids directly (no detokenise/re-tokenise round trip)."""
  score = jax.jit(functools.partial(forward.reward_scores, reward_model=reward_model))

  def fn(prompt_tokens_BxP, prompt_mask_BxP, response_tokens_BxS, response_mask_BxS):
    inputs = forward.SequenceInputs(*(np.asarray(a, np.int32) for a in (
        prompt_tokens_BxP, prompt_mask_BxP, response_tokens_BxS, response_mask_BxS)))
    if mesh is not None:
      inputs = sharding.put_batch(inputs, mesh)
    return np.asarray(jax.device_get(score(params, inputs)))

  return TokenRewardFn(fn=fn, name=name)


def text_reward_source(fn: Callable[[Sequence[str], Sequence[str]], Any], name: str) -> TextRewardFn:
  """Any `fn(prompts, responses) -> scores` (gold reward, verifier, a remote client) as a source."""
  return TextRewardFn(fn=lambda p, r: np.asarray(fn(p, r), np.float32), name=name)


def unboxed_init(model: nn.Module, key: jax.Array) -> PyTree:
  """Random unsharded parameters of `model` (tests, lab scripts); jitted, as eager init is slow."""
  return jax.jit(lambda k: nn.unbox(models.init_params(model, k)))(key)
