"""The PPO host loop with the test transformer: metrics, KL controller, GRPO/RLOO, KL guard, sharding.

Settings equal those of ppo_rollout_test.py (4 prompts x 2 samples, P = 6, S = 8, temperature 0.7),
and the optimisers keep the learning rate in their state (`optax.inject_hyperparams`), so every run
here reuses the same compiled programs (persistent compile cache) whatever its learning rate.
"""
import dataclasses
import json
import logging

import jax
import numpy as np
import optax
import pytest

from rlhf_jax import models, sampling, sharding
from rlhf_jax.algorithms import metrics as metrics_lib
from rlhf_jax.algorithms.ppo import rewards, state as state_lib, trainer as trainer_lib, update
from rlhf_jax.algorithms.reward_source import TokenRewardFn
from rlhf_jax.checkpointing import manager as manager_lib

CFG = models.get_model_config("test")
EOS, PAD = 3, 0
ITERATIONS = 3
LOGPROB_TOLERANCE = 1e-5  # |sampler - trainer| log-prob, and |first PPO ratio - 1|, on CPU float32
TARGET, HORIZON, MAX_ERROR = 0.3, 100.0, 0.5


def low_token_fraction(prompt_tokens, prompt_mask, response_tokens, response_mask):
  """A learnable reward: the fraction of response tokens with id < 256."""
  del prompt_tokens, prompt_mask
  return ((response_tokens < 256) * response_mask).sum(1) / np.maximum(response_mask.sum(1), 1)


REWARD = TokenRewardFn(low_token_fraction, "low_tokens")


def ppo_settings(**overrides):
  base = trainer_lib.PPOSettings(
      sampling=sampling.SamplingConfig(max_new_tokens=8, temperature=0.7, num_samples=2),
      reward=rewards.RewardConfig(), update=update.UpdateConfig(num_epochs=2, num_minibatches=2),
      num_prompts=4, max_prompt_len=6, eos_id=EOS, pad_id=PAD, init_beta=0.1, kl_target=TARGET,
      kl_horizon=HORIZON, kl_max_error=MAX_ERROR, sample_every=1, num_logged_samples=3)
  return dataclasses.replace(base, **overrides)


def grpo_settings(estimator, **overrides):
  return ppo_settings(advantage=estimator, kl_controller="fixed", init_beta=0.05, **overrides,
                      reward=rewards.RewardConfig(kl_mode="loss", kl_estimator="k3"),
                      update=update.UpdateConfig(num_epochs=2, num_minibatches=2, kl_in_loss=True,
                                                 whiten_advantages=False))


def adam(lr):
  return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def make_trainer(settings, mesh=None, lr=3e-3):
  mesh = mesh or sharding.single_device_mesh()
  rules = sharding.DEFAULT_RULES
  return trainer_lib.PPOTrainer(settings, policy_model=models.CausalLM(CFG, mesh=mesh, rules=rules),
                                value_model=models.ScalarModel(CFG, mesh=mesh, rules=rules), reward_source=REWARD,
                                policy_tx=adam(lr), value_tx=adam(1e-3), mesh=mesh, rules=rules)


def prompts():
  rng = np.random.default_rng(0)
  ids = [[2] + rng.integers(4, 500, rng.integers(1, 6)).tolist() for _ in range(12)]
  return trainer_lib.PromptSet(token_ids=ids, texts=[f"prompt {i}" for i in range(12)])


@pytest.fixture(scope="module")
def sft_params():
  return state_lib.unboxed_init(models.CausalLM(CFG), jax.random.key(0))


def start(trainer, params):
  st = trainer.init_state(params, jax.random.key(1))
  return st, state_lib.frozen_copy(st.policy.params, trainer.policy_shardings.params)


@pytest.fixture(scope="module")
def ppo_trainer():
  """One trainer for every single-device PPO test: its functions are traced and compiled once."""
  return make_trainer(ppo_settings())


@pytest.fixture(scope="module")
def ppo_run(ppo_trainer, sft_params, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ppo")
  st, ref = start(ppo_trainer, sft_params)
  writer = metrics_lib.make_writers(workdir, tensorboard=False)
  result = ppo_trainer.run(st, ref, prompts(), ITERATIONS, base_key=jax.random.key(2), writer=writer,
                           workdir=workdir)
  writer.close()
  return dict(result=result, workdir=workdir, final=jax.device_get(result.state.policy.params))


WHAT_TO_LOG = ("kl/ref", "kl/beta", "policy/entropy", "reward/raw_score", "reward/score_minus_kl",
               "policy/approx_kl", "policy/clipfrac", "value/clipfrac", "value/explained_var", "returns/mean",
               "returns/var", "rollout/response_length", "rollout/eos_fraction", "rollout/logprob_diff_max",
               "time/generation_s", "time/forward_s", "time/reward_s", "time/advantages_s", "time/update_s",
               "time/generation_share", "perf/tokens_per_sec", "loss/policy", "loss/value", "loss/total")


def test_ppo_iterations_log_everything_and_stay_on_policy(ppo_run):
  history = ppo_run["result"].history
  assert [h["step"] for h in history] == [1, 2, 3]
  for h in history:
    missing = [k for k in WHAT_TO_LOG if k not in h]
    assert not missing, missing
    assert all(np.isfinite(v) for v in h.values())
    assert h["rollout/logprob_diff_max"] < LOGPROB_TOLERANCE  # sampler vs trainer, temperature 0.7
    assert abs(h["policy/first_ratio_max"] - 1.0) < LOGPROB_TOLERANCE  # first minibatch, first epoch
    assert h["policy/first_clipfrac"] == 0.0
    assert h["policy/ratio_max"] > 1.0 + 1e-4  # later minibatches see moved parameters
  assert history[0]["kl/ref"] == 0.0  # the first rollout comes from the reference itself
  assert history[-1]["kl/ref"] != 0.0
  records = metrics_lib.read_jsonl(ppo_run["workdir"] / "metrics.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]


def test_adaptive_controller_follows_its_formula_inside_the_trainer(ppo_run):
  history = ppo_run["result"].history
  rows = 8
  clipped = 0
  for h in history:
    error = h["kl/ref"] / TARGET - 1.0
    clipped += abs(error) > MAX_ERROR
    expected = h["kl/beta"] * (1.0 + np.clip(error, -MAX_ERROR, MAX_ERROR) * rows / HORIZON)
    np.testing.assert_allclose(h["kl/beta_next"], expected, rtol=1e-6)
  for before, after in zip(history, history[1:]):
    assert after["kl/beta"] == pytest.approx(before["kl/beta_next"], rel=1e-7)
  assert clipped >= 1  # the first iteration (KL 0) exercises the clip
  np.testing.assert_allclose(history[0]["kl/beta_next"], 0.1 * (1 - MAX_ERROR * rows / HORIZON), rtol=1e-6)


def test_sample_completions_are_written_with_score_and_kl(ppo_run):
  lines = (ppo_run["workdir"] / "samples.jsonl").read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert len(records) == 3 * ITERATIONS
  assert {r["iteration"] for r in records} == {0, 1, 2}
  for r in records:
    assert {"prompt", "response", "raw_score", "score", "kl", "ended_with_eos"} <= set(r)
    assert 0.0 <= r["raw_score"] <= 1.0


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_critic_free_paths_run(sft_params, estimator):
  ema_decay = 0.5 if estimator == "rloo" else 0.0  # the RLOO run also checks the policy EMA (item 20)
  trainer = make_trainer(grpo_settings(estimator, ema_decay=ema_decay))
  assert trainer.value_fn is None
  st, ref = start(trainer, sft_params)
  assert st.value is None
  first = trainer.run(st, ref, prompts(), 1, base_key=jax.random.key(3))
  if ema_decay:
    expected = jax.tree.map(lambda p0, p1: 0.5 * p0 + 0.5 * np.asarray(p1), sft_params,
                            jax.device_get(first.state.policy.params))
    jax.tree.map(lambda e, w: np.testing.assert_allclose(np.asarray(e), w, atol=1e-6),
                 jax.device_get(first.state.policy_ema), expected)
  else:
    assert first.state.policy_ema is None
  result = trainer.run(first.state, ref, prompts(), 2, base_key=jax.random.key(3))
  result = result._replace(history=first.history + result.history)
  for h in result.history:
    assert np.isfinite(h["loss/total"]) and "loss/kl" in h and "loss/value" not in h
    assert h["kl/beta"] == pytest.approx(0.05) and h["reward/non_score"] == 0.0  # KL in the loss only
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       result.state.policy.params, sft_params)
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_reward_normalisation_from_reference_samples(ppo_trainer, sft_params):
  st, ref = start(ppo_trainer, sft_params)
  fitted = ppo_trainer.fit_reward_normalization(st, ref, prompts(), jax.random.key(5), num_samples=16)
  scores = []
  for i in range(2):  # the same two reference rollouts (8 rows each) the fit sampled
    batch, texts = ppo_trainer._prompt_batch(prompts(), i)  # pylint: disable=protected-access
    rollout = ppo_trainer.generate(ref, *batch, jax.random.fold_in(jax.random.key(5), i))
    scores.append(ppo_trainer.score(rollout, texts)[0])
  normed = float(fitted.reward_gain) * np.concatenate(scores) + float(fitted.reward_bias)
  np.testing.assert_allclose([normed.mean(), normed.std()], [0.0, 1.0], atol=1e-5)


def test_settings_refuse_kl_in_both_places_and_bad_guards():
  with pytest.raises(ValueError, match="never both"):
    ppo_settings(reward=rewards.RewardConfig(kl_mode="reward"), update=update.UpdateConfig(kl_in_loss=True)).validate()
  with pytest.raises(ValueError, match="guard.action"):
    ppo_settings(guard=trainer_lib.GuardConfig(action="ignore")).validate()
  with pytest.raises(ValueError, match="top_k must be 0"):
    ppo_settings(sampling=sampling.SamplingConfig(top_k=5)).validate()
  with pytest.raises(ValueError, match="data-parallel devices"):
    ppo_settings(num_prompts=2).validate(data_parallel=4)
  with pytest.raises(ValueError, match="must differ from the EOS id"):
    ppo_settings(pad_id=EOS).validate()


# -- KL guard ------------------------------------------------------------------------------------


def _perturbed(params, scale=0.5):
  """Parameters far from the reference: KL to it is large from the first rollout."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


GUARD = dict(max_kl=5.0, max_rollbacks=2)


@pytest.fixture
def guarded(ppo_trainer, sft_params, tmp_path):
  """A checkpoint directory holding a good state at step 0 and a diverged one at step 1."""
  good, ref = start(ppo_trainer, sft_params)
  bad = good.replace(policy=good.policy.replace(params=_perturbed(good.policy.params)),
                     iteration=good.iteration + 1)
  manager = manager_lib.CheckpointManager(tmp_path / "checkpoints", async_save=False)
  manager.save(0, good)
  manager.save(1, bad)
  yield good, ref, manager
  manager.close()


def test_kl_guard_stop_raises_a_clear_error(ppo_trainer, guarded):
  good, ref, manager = guarded
  with pytest.raises(trainer_lib.KLGuardError, match=r"exceeds guard.max_kl=5.0 at iteration 1; stopping.*"
                                                     r"last good checkpoint is step 0"):
    ppo_trainer.run(good, ref, prompts(), ITERATIONS, base_key=jax.random.key(2), manager=manager,
                    guard=trainer_lib.GuardConfig(action="stop", **GUARD))


def test_kl_guard_rolls_back_to_the_last_good_checkpoint(ppo_trainer, guarded, caplog):
  good, ref, manager = guarded
  with caplog.at_level(logging.WARNING):
    result = ppo_trainer.run(good, ref, prompts(), ITERATIONS, base_key=jax.random.key(2), manager=manager,
                             guard=trainer_lib.GuardConfig(action="rollback", **GUARD))
  assert "rolled back to iteration 0 (checkpoint step 0" in caplog.text
  assert result.rollbacks == 1 and int(result.state.iteration) == ITERATIONS
  assert result.history[0]["kl/ref"] == 0.0  # re-run from the good state (policy == reference)
  assert all(h["kl/ref"] < 5.0 for h in result.history)
  assert result.history[0]["kl/beta"] == pytest.approx(0.2)  # beta doubled by the rollback
  assert manager.all_steps()[-1] == ITERATIONS  # the diverged step-1 checkpoint was replaced


def test_kl_guard_without_a_good_state_stops(ppo_trainer, sft_params):
  st, ref = start(ppo_trainer, sft_params)
  st = st.replace(policy=st.policy.replace(params=_perturbed(st.policy.params)))
  with pytest.raises(trainer_lib.KLGuardError, match="no good state to roll back to"):
    ppo_trainer.run(st, ref, prompts(), ITERATIONS, base_key=jax.random.key(2),
                    guard=trainer_lib.GuardConfig(action="rollback", **GUARD))


# -- sharded == single device ---------------------------------------------------------------------


def test_sharded_iterations_equal_single_device(ppo_run, sft_params):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  trainer = make_trainer(ppo_settings(), mesh=mesh)
  st, ref = start(trainer, sft_params)
  assert st.policy.params["lm_head"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  result = trainer.run(st, ref, prompts(), ITERATIONS, base_key=jax.random.key(2))
  for single, sharded in zip(ppo_run["result"].history, result.history):
    for key in ("loss/total", "loss/policy", "loss/value", "kl/ref", "reward/raw_score", "returns/mean"):
      np.testing.assert_allclose(sharded[key], single[key], atol=1e-4, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=1e-4),
               jax.device_get(result.state.policy.params), ppo_run["final"])
