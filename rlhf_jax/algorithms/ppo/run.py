"""`train_ppo(config, workdir)`: PPO / GRPO / RLOO from a config, mirroring `sft.train_sft`.

Acronyms: PPO = Proximal Policy Optimization; GRPO = Group Relative Policy Optimization; RLOO =
REINFORCE Leave-One-Out; SFT = Supervised Fine-Tuning; RM = reward model; KL = Kullback-Leibler.

validate -> mesh -> SFT policy artifact (model, params, tokenizer) -> lab prompts -> reward source
(gold reward, verifier, or a registered RM) -> value model -> PPOTrainer.run (checkpoints, metrics,
samples, KL guard) -> export the policy as a "policy" artifact -> `<workdir>/summary.json`.
Re-running on the same workdir resumes from the last checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any, NamedTuple, Optional

import jax
import ml_collections

from rlhf_jax import models, sampling, sharding
from rlhf_jax.algorithms import lab_rewards, metrics as metrics_lib, optimizer as optimizer_lib
from rlhf_jax.algorithms import policy_loading, run_setup
from rlhf_jax.algorithms.ppo import advantages as advantages_lib
from rlhf_jax.algorithms.ppo import rewards as rewards_lib, state as state_lib, tf_adam, trainer as trainer_lib
from rlhf_jax.algorithms.ppo import update as update_lib
from rlhf_jax.checkpointing import artifacts
from rlhf_jax.config import model_config_from
from rlhf_jax.data import chat

logger = logging.getLogger(__name__)
VALUE_INITS = ("auto",) + state_lib.VALUE_INITS
PyTree = Any


@dataclasses.dataclass(frozen=True)
class Derived:
  """Values computed once from the config."""
  mesh_shape: dict[str, int]
  settings: trainer_lib.PPOSettings  # with placeholder EOS/PAD ids until the tokenizer is known
  rows_per_iteration: int
  minibatch_rows: int


def _none_if(value: float, off: float = 0.0) -> Optional[float]:
  return None if value == off else value


def settings_from_config(config: ml_collections.ConfigDict, *, eos_id: int = 3, pad_id: int = 0
                         ) -> trainer_lib.PPOSettings:
  """The static run settings (hashable dataclasses) from the config sections."""
  r, k, u, a, g = config.rollout, config.kl, config.algo, config.advantage, config.guard
  sampling_cfg = sampling.SamplingConfig(max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                         num_samples=r.num_samples, stop_at_eos=r.stop_at_eos)
  reward_cfg = rewards_lib.RewardConfig(
      kl_mode=k.mode, kl_estimator=k.estimator, missing_eos_penalty=None if not config.reward.penalize_missing_eos
      else config.reward.missing_eos_penalty, running_norm=config.reward.running_norm,
      running_norm_shift_mean=config.reward.running_norm_shift_mean, clip=_none_if(config.reward.clip),
      whiten=config.reward.whiten, whiten_shift_mean=config.reward.whiten_shift_mean)
  update_cfg = update_lib.UpdateConfig(
      num_epochs=u.num_epochs, num_minibatches=u.num_minibatches, shuffle=u.shuffle, clip_eps=u.clip_eps,
      clip_eps_high=_none_if(u.clip_eps_high), dual_clip=_none_if(u.dual_clip),
      value_clip_eps=_none_if(u.value_clip_eps), vf_coef=u.vf_coef, entropy_coef=u.entropy_coef,
      whiten_advantages=u.whiten_advantages, aggregation=u.aggregation,
      fixed_length=u.fixed_length or (r.max_new_tokens if u.aggregation == "fixed_length" else None),
      kl_in_loss=k.mode == "loss", kl_estimator=k.estimator, tis_cap=_none_if(u.tis_cap),
      ptx_coef=config.ptx.coef)
  return trainer_lib.PPOSettings(
      sampling=sampling_cfg, reward=reward_cfg, update=update_cfg, num_prompts=r.num_prompts,
      max_prompt_len=r.max_prompt_len, eos_id=eos_id, pad_id=pad_id, advantage=a.estimator, gamma=a.gamma,
      lam=a.lam, kl_controller=k.controller, init_beta=k.init_beta, kl_target=k.target, kl_horizon=k.horizon,
      kl_max_error=k.max_error, critic_warmup_iterations=config.value.critic_warmup_iterations,
      reward_norm_samples=config.reward.normalize_samples, ema_decay=config.train.ema_decay,
      logprob_chunk_size=config.train.logprob_chunk_size, sample_every=config.train.sample_every,
      num_logged_samples=config.train.num_logged_samples, checkpoint_every=config.checkpoint.every,
      ptx_batch_size=config.ptx.batch_size,
      guard=trainer_lib.GuardConfig(max_kl=g.max_kl, action=g.action, max_rollbacks=g.max_rollbacks,
                                    rollback_beta_factor=g.rollback_beta_factor),
      seed=config.seed)


def validate_and_derive(config: ml_collections.ConfigDict, num_devices: Optional[int] = None,
                        num_processes: Optional[int] = None) -> Derived:
  """Fails fast with a message naming the field; returns the derived sizes (no devices touched)."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  shape = sharding.resolve_mesh_shape({"data": config.mesh.data, "fsdp": config.mesh.fsdp,
                                       "tensor": config.mesh.tensor}, num_devices)
  mesh_shape = dict(zip(sharding.MESH_AXES, shape))
  data_parallel = mesh_shape["data"] * mesh_shape["fsdp"]
  settings = settings_from_config(config)
  r = config.rollout
  if r.num_prompts % num_processes:
    raise ValueError(f"rollout.num_prompts={r.num_prompts} must be divisible by the {num_processes} processes")
  if r.num_prompts % data_parallel:
    raise ValueError(f"rollout.num_prompts={r.num_prompts} must be divisible by the data-parallel devices "
                     f"({data_parallel} = mesh.data x mesh.fsdp)")
  settings.validate(data_parallel)
  for name in ("optimizer", "value_optimizer"):
    optimizer_lib.validate_optimizer_config(config[name])
    if config[name].get("adam_form", "pytorch") not in tf_adam.ADAM_FORMS:
      raise ValueError(f"{name}.adam_form must be one of {tf_adam.ADAM_FORMS}, got {config[name].adam_form!r}")
    if config[name].compute_dtype != config.model.compute_dtype:
      raise ValueError(f"{name}.compute_dtype ({config[name].compute_dtype!r}) must equal model.compute_dtype "
                       f"({config.model.compute_dtype!r})")
  if config.train.total_steps <= 0:
    raise ValueError(f"train.total_steps (PPO iterations) must be positive, got {config.train.total_steps}")
  if config.value.init not in VALUE_INITS:
    raise ValueError(f"value.init must be one of {VALUE_INITS}, got {config.value.init!r}")
  if config.prompts.task not in lab_rewards.TASKS:
    raise ValueError(f"prompts.task must be one of {lab_rewards.TASKS}, got {config.prompts.task!r}")
  if config.prompts.num < r.num_prompts:
    raise ValueError(f"prompts.num ({config.prompts.num}) must be >= rollout.num_prompts ({r.num_prompts})")
  if r.max_prompt_len + r.max_new_tokens > config.model.max_len:
    raise ValueError(f"rollout.max_prompt_len + rollout.max_new_tokens ({r.max_prompt_len + r.max_new_tokens}) "
                     f"exceeds model.max_len ({config.model.max_len})")
  if config.ptx.coef > 0 and config.ptx.batch_size <= 0:
    raise ValueError("ptx.coef > 0 needs ptx.batch_size > 0 (SFT rows per iteration)")
  rows = settings.rows
  return Derived(mesh_shape=mesh_shape, settings=settings, rows_per_iteration=rows,
                 minibatch_rows=rows // settings.update.num_minibatches)


def _prompt_text(prompt: Any) -> str:
  return prompt if isinstance(prompt, str) else chat.render_text(prompt)


def lab_prompt_set(config: ml_collections.ConfigDict, tokenizer: Any) -> trainer_lib.PromptSet:
  """The training prompts of `config.prompts` rendered with the chat template."""
  examples = lab_rewards.lab_prompts(config.prompts.task, "train", config.prompts.num, seed=config.lab.seed)
  return trainer_lib.PromptSet(token_ids=[chat.render_prompt(tokenizer, e.prompt) for e in examples],
                               texts=[_prompt_text(e.prompt) for e in examples])


def reward_and_monitors(config: ml_collections.ConfigDict, registry_dir: Any, tokenizer: Any):
  """(reward source, monitors): the source named by `config.reward.source`, plus the task's gold reward
  as a monitor when the source is a proxy and `config.reward.monitor_gold` is set."""
  source = lab_rewards.make_reward_source(config.reward.source, registry_dir=registry_dir,
                                          policy_tokenizer_id=tokenizer.id)
  monitors = {}
  if config.reward.monitor_gold and config.reward.source not in ("gold", "verifier"):
    monitors["gold"] = lab_rewards.gold_source(config.prompts.task)
  return source, monitors


class PPOSetup(NamedTuple):
  """Everything `train_ppo` builds before its first iteration (see `build_trainer`)."""
  trainer: trainer_lib.PPOTrainer
  state: state_lib.PPOState  # iteration 0: policy = SFT parameters, critic per `value.init`
  ref_params: PyTree  # the frozen reference policy (a separate copy of the SFT parameters)
  prompts: trainer_lib.PromptSet
  tokenizer: Any
  model_config: models.ModelConfig
  tokenizer_path: str
  lineage: list[str]  # artifact ids the policy descends from
  registry_dir: Any
  workdir: pathlib.Path
  config: ml_collections.ConfigDict


def _resolve_value_init(config: ml_collections.ConfigDict, settings: trainer_lib.PPOSettings, model_cfg: Any,
                        registry_dir: Any) -> tuple[str, Optional[PyTree]]:
  """(value init, reward-model params or None) from `value.init` ("auto": the RM when it fits, else the policy)."""
  value_init = config.value.init
  if not advantages_lib.needs_critic(settings.advantage):
    return value_init, None
  is_rm = config.reward.source.startswith("reward_model:")
  if value_init == "reward_model" and not is_rm:
    raise ValueError(f"value.init='reward_model' needs reward.source='reward_model:<id>', got "
                     f"{config.reward.source!r}")
  reward_params = None
  if is_rm and value_init in ("auto", "reward_model"):
    from rlhf_jax.algorithms import rm_scoring  # pylint: disable=g-import-not-at-top
    scorer = rm_scoring.load_scorer(config.reward.source.partition(":")[2], registry_dir)
    usable = scorer.model_config == model_cfg and not scorer.num_members
    if not usable and value_init == "reward_model":
      raise ValueError("value.init='reward_model' needs a single reward model with the policy's model config "
                       f"(got {scorer.num_members or 1} member(s), same config: {scorer.model_config == model_cfg}); "
                       "use value.init='policy'")
    value_init = "reward_model" if usable else "policy"
    reward_params = scorer.params if usable else None
  elif value_init == "auto":
    value_init = "policy"
  logger.info("value model initialised from the %s", "reward model" if value_init == "reward_model"
              else "policy trunk with a zero head")
  return value_init, reward_params


def build_trainer(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> PPOSetup:
  """Validates the config and builds the trainer, its initial state and the frozen reference.

  SFT policy artifact (or, for smoke tests, random init with a lab-trained tokenizer) -> lab prompts
  -> reward source and gold monitor -> value model init -> PPO-ptx rows -> `PPOTrainer`.
  """
  workdir = pathlib.Path(workdir).absolute()
  validate_and_derive(config)
  if not config.init.policy_artifact and not config.init.allow_random_init:
    raise ValueError("init.policy_artifact is empty: PPO starts from the SFT policy (PPO_DETAILS item 21); give "
                     "the artifact id printed by train_sft (or set init.allow_random_init for smoke tests)")
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = run_setup.mesh_from_config(config.mesh)
  rules = run_setup.rules_from_config(config.mesh)
  registry_dir = run_setup.registry_dir(workdir, config.registry_dir)

  if config.init.policy_artifact:
    loaded = policy_loading.load_policy(registry_dir, config.init.policy_artifact, mesh=mesh, rules=rules)
    model_cfg, params, tokenizer = loaded.model.config, loaded.params, loaded.tokenizer
    tokenizer_path, lineage = loaded.record["tokenizer_path"], [loaded.artifact_id]
  else:  # smoke tests: random init and a tokenizer trained on the lab corpus
    from rlhf_jax.algorithms import sft  # pylint: disable=g-import-not-at-top
    records = sft.lab_sft_records(config.lab)["train"]
    tokenizer = run_setup.tokenizer_from_config(config.tokenizer, workdir,
                                                lambda: [r["prompt"] + " " + r["response"] for r in records])
    model_cfg = model_config_from(config.model, vocab_size=tokenizer.vocab_size)
    params = state_lib.unboxed_init(models.CausalLM(model_cfg), jax.random.key(config.seed))
    tokenizer_path = config.tokenizer.path or str(workdir / "tokenizer.model")
    lineage = []
  settings = settings_from_config(config, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  prompts = lab_prompt_set(config, tokenizer)
  source, monitors = reward_and_monitors(config, registry_dir, tokenizer)
  value_init, reward_params = _resolve_value_init(config, settings, model_cfg, registry_dir)

  ptx_rows = None
  if config.ptx.coef > 0:  # PPO-ptx (item 20): SFT rows from the lab demonstrations
    from rlhf_jax.algorithms import sft  # pylint: disable=g-import-not-at-top
    ids, masks = sft.tokenize_sft(sft.lab_sft_records(config.lab)["train"], tokenizer)
    ptx_rows, _ = sft.make_rows(ids, masks, seq_len=config.ptx.seq_len, pad_id=tokenizer.pad_id, pack=False)

  trainer = trainer_lib.PPOTrainer(
      settings, policy_model=models.CausalLM(model_cfg, mesh=mesh, rules=rules),
      value_model=models.ScalarModel(model_cfg, mesh=mesh, rules=rules), reward_source=source,
      policy_tx=tf_adam.make_optimizer(config.optimizer)[0], value_tx=tf_adam.make_optimizer(config.value_optimizer)[0],
      mesh=mesh, rules=rules, decode=tokenizer.decode_batch, monitors=monitors, ptx_rows=ptx_rows)
  state = trainer.init_state(params, jax.random.key(config.seed), value_init=value_init, reward_params=reward_params)
  ref_params = state_lib.frozen_copy(state.policy.params, trainer.policy_shardings.params)
  return PPOSetup(trainer=trainer, state=state, ref_params=ref_params, prompts=prompts, tokenizer=tokenizer,
                  model_config=model_cfg, tokenizer_path=tokenizer_path, lineage=lineage, registry_dir=registry_dir,
                  workdir=workdir, config=config)


def train_ppo(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs PPO (or GRPO / RLOO: `advantage.estimator`) from the SFT policy on lab prompts."""
  setup = build_trainer(config, workdir)
  workdir, tokenizer = setup.workdir, setup.tokenizer
  manager = run_setup.checkpoint_manager_from_config(config.checkpoint, workdir, name="ppo")
  writer = metrics_lib.make_writers(workdir, log_every=config.train.log_every)
  dataset_id = f"lab_{config.prompts.task}_prompts@seed{config.lab.seed}x{config.prompts.num}"
  result = setup.trainer.run(setup.state, setup.ref_params, setup.prompts, config.train.total_steps,
                             base_key=jax.random.key(config.seed + 1), writer=writer, manager=manager,
                             workdir=workdir, config=config,
                             metadata={"seed": config.seed, "dataset_ids": [dataset_id], "tokenizer_id": tokenizer.id})
  manager.close()
  writer.close()
  final = result.state
  export = final.policy.params if final.policy_ema is None else final.policy_ema
  estimator = config.advantage.estimator
  record = run_setup.export_and_register(
      workdir=workdir, registry_path=setup.registry_dir, kind="policy",
      name="ppo_policy" if estimator == "gae" else f"{estimator}_policy", params=export,
      record={"model_config": setup.model_config.to_dict(), "tokenizer_path": setup.tokenizer_path,
              "tokenizer_id": tokenizer.id, "dataset_ids": [dataset_id], "parents": setup.lineage,
              "reward_source": config.reward.source, "step": int(jax.device_get(final.iteration)),
              "code_version": artifacts.code_version()})
  keys = ("reward/raw_score", "kl/ref", "kl/beta", "rollout/response_length", "rollout/eos_fraction",
          "monitor/gold", "time/generation_share", "time/iteration_s")
  first, last = (result.history[0], result.history[-1]) if result.history else ({}, {})
  summary = {"artifact_id": record["artifact_id"], "dataset_id": dataset_id, "iterations": len(result.history),
             "rollbacks": result.rollbacks, "first": {k: first[k] for k in keys if k in first},
             "last": {k: last[k] for k in keys if k in last}}
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
