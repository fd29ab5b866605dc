"""Rollout and forward passes with the test transformer: EOS trick, temperature, alignment.

Shapes and settings equal those of ppo_trainer_test.py (4 prompts x 2 samples, P = 6, S = 8,
temperature 0.7), so both files share compiled programs through the persistent compile cache.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import models, sampling, sharding
from rlhf_jax.algorithms.ppo import forward, rewards, rollout, state as state_lib, trainer as trainer_lib
from rlhf_jax.algorithms.ppo import update
from rlhf_jax.algorithms.reward_source import TokenRewardFn

CFG = models.get_model_config("test")
TEMPERATURE, EOS, PAD = 0.7, 3, 0
PROMPTS = [[2, 17, 99, 45], [2, 301], [2, 7, 8, 9, 10, 11], [2, 400, 5]]
LOGPROB_TOLERANCE = 1e-5  # |sampler - trainer| log-prob on CPU float32 (measured: <= 5e-7)


def settings():
  return trainer_lib.PPOSettings(
      sampling=sampling.SamplingConfig(max_new_tokens=8, temperature=TEMPERATURE, num_samples=2),
      reward=rewards.RewardConfig(), update=update.UpdateConfig(num_epochs=2, num_minibatches=2),
      num_prompts=4, max_prompt_len=6, eos_id=EOS, pad_id=PAD)


@pytest.fixture(scope="module")
def setup():
  lm, vm = models.CausalLM(CFG), models.ScalarModel(CFG)
  tx = optax.adam(1e-3)
  trainer = trainer_lib.PPOTrainer(settings(), policy_model=lm, value_model=vm,
                                   reward_source=TokenRewardFn(lambda *a: np.zeros(8), "zero"), policy_tx=tx,
                                   value_tx=tx, mesh=sharding.single_device_mesh())
  params = state_lib.unboxed_init(lm, jax.random.key(0))
  value_params = state_lib.unboxed_init(vm, jax.random.key(1))
  tokens, mask = trainer_lib.left_pad(PROMPTS, 6, PAD)
  out = trainer.generate(params, tokens, mask, jax.random.key(3))
  fwd = trainer.evaluate(params, params, value_params, out.inputs)
  return dict(lm=lm, vm=vm, trainer=trainer, params=params, value_params=value_params, out=out, fwd=fwd)


def test_eos_trick_truncates_after_the_first_eos():
  tokens = jnp.array([[5, 3, 7, 3], [5, 6, 7, 8], [3, 9, 9, 0]], jnp.int32)
  mask = jnp.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], jnp.int32)
  logp = -jnp.arange(1.0, 13.0).reshape(3, 4)
  toks, lp, m, ended = rollout.eos_trick(tokens, logp, mask, eos_id=3, pad_id=0)
  np.testing.assert_array_equal(toks, [[5, 3, 0, 0], [5, 6, 7, 8], [3, 0, 0, 0]])
  np.testing.assert_array_equal(m, [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
  np.testing.assert_array_equal(lp, [[-1, -2, 0, 0], [-5, -6, -7, -8], [-9, 0, 0, 0]])
  np.testing.assert_array_equal(ended, [True, False, True])
  # The missing-EOS penalty hits exactly the row that never ended.
  np.testing.assert_array_equal(rewards.apply_missing_eos_penalty(jnp.float32([4, 5, 6]), ended, -1.0), [4, -1, 6])


def test_eos_trick_on_sampled_responses(setup):
  """A token that occurs mid-response in a real sample, used as EOS, truncates exactly there."""
  out = setup["out"]
  toks = np.asarray(out.inputs.response_tokens_BxS)
  eos = int(toks[0, 2])
  new_toks, _, new_mask, ended = rollout.eos_trick(out.inputs.response_tokens_BxS, out.rollout_logp_BxS,
                                                   out.inputs.response_mask_BxS, eos_id=eos, pad_id=PAD)
  for b in range(toks.shape[0]):
    hits = np.flatnonzero(toks[b] == eos)
    n = hits[0] + 1 if hits.size else toks.shape[1]
    np.testing.assert_array_equal(np.asarray(new_mask)[b], np.arange(toks.shape[1]) < n)
    np.testing.assert_array_equal(np.asarray(new_toks)[b, :n], toks[b, :n])
    assert bool(ended[b]) == bool(hits.size)
  assert bool(ended[0]) and int(np.asarray(new_mask)[0].sum()) <= 3


def test_rollout_and_trainer_logprobs_agree_at_temperature(setup):
  out, fwd = setup["out"], setup["fwd"]
  assert out.inputs.response_tokens_BxS.shape == (8, 8)
  mask = np.asarray(out.inputs.response_mask_BxS) > 0
  diff = np.abs(np.asarray(out.rollout_logp_BxS) - np.asarray(fwd.old_logp_BxS))[mask]
  assert diff.max() < LOGPROB_TOLERANCE, diff.max()
  # Negative control: log-probs without the temperature are far off, so the check above has power.
  t1 = jax.jit(functools.partial(forward.policy_logprobs, model=setup["lm"], temperature=1.0, with_entropy=False))
  wrong = np.asarray(t1(setup["params"], out.inputs)[0])
  assert np.abs(wrong - np.asarray(out.rollout_logp_BxS))[mask].max() > 1e-2
  # Same parameters for policy and reference: the reference log-probs are the same numbers.
  np.testing.assert_array_equal(fwd.ref_logp_BxS, fwd.old_logp_BxS)
  assert np.all(np.asarray(fwd.old_logp_BxS)[~mask] == 0)


def test_values_and_reward_scores_read_the_right_positions(setup):
  """values[:, s] is the head at P - 1 + s (the state before token s); the reward is read at the
  last real token of [prompt; response]."""
  out, fwd, vm = setup["out"], setup["fwd"], setup["vm"]
  tokens, positions, segments = forward.concat(out.inputs)
  full = np.asarray(jax.jit(lambda p, t, q, s: vm.apply({"params": p}, t, q, s)[0])(
      setup["value_params"], tokens, positions, segments))
  lengths = np.asarray(out.lengths_B)
  mask = np.asarray(out.inputs.response_mask_BxS)
  P = out.inputs.prompt_tokens_BxP.shape[1]
  np.testing.assert_allclose(np.asarray(fwd.values_BxS), full[:, P - 1:P + 7] * mask, atol=1e-5)
  source = state_lib.reward_model_source(vm, setup["value_params"])
  batch = trainer_lib.ScoringBatch(prompts=[""] * 8, responses=[""] * 8, **{
      "prompt_tokens_BxP": np.asarray(out.inputs.prompt_tokens_BxP), "prompt_mask_BxP":
      np.asarray(out.inputs.prompt_mask_BxP), "response_tokens_BxS": np.asarray(out.inputs.response_tokens_BxS),
      "response_mask_BxS": mask})
  np.testing.assert_allclose(source(batch), full[np.arange(8), P - 1 + lengths], atol=1e-5)


def test_chunked_logprobs_equal_full_logprobs(setup):
  out, fwd = setup["out"], setup["fwd"]
  chunked = jax.jit(functools.partial(forward.policy_logprobs, model=setup["lm"], temperature=TEMPERATURE,
                                      chunk_size=128))
  logp, ent = chunked(setup["params"], out.inputs)
  np.testing.assert_allclose(logp, fwd.old_logp_BxS, atol=2e-5)
  np.testing.assert_allclose(ent, fwd.entropy_BxS, atol=2e-5)


def test_left_pad_and_prompt_rows():
  tokens, mask = trainer_lib.left_pad([[2, 5], [2]], 3, PAD)
  np.testing.assert_array_equal(tokens, [[0, 2, 5], [0, 0, 2]])
  np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 1]])
  with pytest.raises(ValueError, match="prompt 1 has 4 tokens, more than sampling.max_prompt_len=3"):
    trainer_lib.left_pad([[2], [2, 3, 4, 5]], 3, PAD)
  # Every prompt is used once per epoch; epochs differ; the schedule is a function of the iteration.
  rows = [trainer_lib.prompt_rows(10, i, 3, seed=0) for i in range(6)]
  assert sorted(np.concatenate(rows[:3]).tolist()) == sorted(set(np.concatenate(rows[:3]).tolist()))
  assert not np.array_equal(rows[0], rows[3])
  np.testing.assert_array_equal(trainer_lib.prompt_rows(10, 4, 3, seed=0), rows[4])


def test_value_network_initialisations(setup):
  """Item 8: from the reward model (a copy of its parameters) or from the policy trunk with a zero
  head (every initial value exactly 0); a separate network either way."""
  vm, out = setup["vm"], setup["out"]
  mesh, tx = sharding.single_device_mesh(), optax.adam(1e-3)
  zero, _ = state_lib.create_value_state(vm, tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0), init="policy",
                                         policy_params=setup["params"])
  np.testing.assert_array_equal(zero.params["decoder"]["layer_0"]["mlp"]["wo"]["kernel"],
                                setup["params"]["decoder"]["layer_0"]["mlp"]["wo"]["kernel"])
  values = forward.values(zero.params, out.inputs, value_model=vm)
  assert np.all(np.asarray(values) == 0.0)
  from_rm, _ = state_lib.create_value_state(vm, tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0),
                                            init="reward_model", reward_params=setup["value_params"])
  jax.tree.map(np.testing.assert_array_equal, from_rm.params, setup["value_params"])
  with pytest.raises(ValueError, match="value.init='policy'"):
    state_lib.create_value_state(vm, tx, mesh, sharding.DEFAULT_RULES, jax.random.key(0), init="reward_model")
