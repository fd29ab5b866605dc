"""The host-side DPO run: `train_dpo(config, workdir)` (DPO = Direct Preference Optimization).

Mirrors `sft.train_sft`: validate -> mesh -> initial policy (the SFT artifact, or random init in
tests) -> lab preferences -> tokenizer ids -> reference (in-step, or precomputed once and stored
with the dataset id) -> state -> jitted step -> host loop -> export artifact.

Evaluation (every `train.eval_every` steps, at the end and, with `eval.at_start`, before the first
step) reports, under "eval/":
  pref/*   the preference loss, accuracy and implicit-reward margin on held-out pairs;
  gold/*   the lab's gold reward (total and components) of responses sampled from the policy on
           held-out prompts (temperature 1);
  kl/*     KL(policy || reference) estimated on those same samples (`reference_kl`).
In precomputed mode the reference parameters are loaded only for the KL evaluation and released
right after, so they are never in memory during training steps.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from rlhf_jax import lab, losses, models, sampling, sharding
from rlhf_jax.algorithms import batch_math, dpo, host_loop, metrics as metrics_lib
from rlhf_jax.algorithms import optimizer as optimizer_lib
from rlhf_jax.algorithms import reference_kl, reference_logprobs, run_setup, sft, train_state
from rlhf_jax.checkpointing import artifacts, registry
from rlhf_jax.data import batching, chat, loader as loader_lib, tokenization
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import ValidationPolicy

logger = logging.getLogger(__name__)
PyTree = Any
REFERENCE_MODES = ("in_step", "precomputed")
LABELS = ("annotators", "gold")
# Hyper-parameters each loss takes from the `algo` section.
LOSS_HPARAMS = {"dpo": ("beta",), "cdpo": ("beta", "label_smoothing"),
                "robust_dpo": ("beta", "label_noise"), "ipo": ("beta",), "hinge": ("beta",),
                "simpo": ("beta", "gamma"), "orpo": ("lam",)}


@dataclasses.dataclass(frozen=True)
class Derived:
  """Values computed once from the config (never stored back into the locked config)."""
  batch: batch_math.BatchSizes
  mesh_shape: dict[str, int]
  loss_hparams: dict[str, float]
  buckets: tuple[int, ...]


def loss_hparams(algo: ml_collections.ConfigDict) -> dict[str, float]:
  """The keyword hyper-parameters of `algo.loss`, read from the `algo` section."""
  if algo.loss not in LOSS_HPARAMS:
    raise ValueError(f"algo.loss must be one of {sorted(LOSS_HPARAMS)}, got {algo.loss!r}")
  return {name: float(algo[name]) for name in LOSS_HPARAMS[algo.loss]}


def validate_and_derive(config: ml_collections.ConfigDict, num_devices: Optional[int] = None,
                        num_processes: Optional[int] = None) -> Derived:
  """Fails fast with a message naming the field; returns the derived sizes.

  Args:
    config: a DPO config (configs/dpo.py).
    num_devices: global device count; default `jax.device_count()`.
    num_processes: JAX processes (hosts); default `jax.process_count()`.
  """
  mesh_shape, batch = run_setup.derive_run_sizes(config, num_devices, num_processes)
  hparams = loss_hparams(config.algo)
  try:  # the loss functions range-check their own hyper-parameters on a dummy pair
    losses.get_preference_loss(config.algo.loss)(
        np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1), chosen_len_B=np.ones(1),
        rejected_len_B=np.ones(1), **hparams)
  except ValueError as e:
    raise ValueError(f"algo ({config.algo.loss}): {e}") from None
  if config.reference.mode not in REFERENCE_MODES:
    raise ValueError(f"reference.mode must be one of {REFERENCE_MODES}, got "
                     f"{config.reference.mode!r}")
  if config.reference.batch_size < 0:
    raise ValueError(f"reference.batch_size must be >= 0, got {config.reference.batch_size}")
  if config.train.total_steps <= 0:
    raise ValueError(f"train.total_steps must be positive, got {config.train.total_steps}")
  if config.data.source != "lab":
    raise ValueError(f"data.source must be 'lab' (the built-in preferences), got "
                     f"{config.data.source!r}")
  if config.data.labels not in LABELS:
    raise ValueError(f"data.labels must be one of {LABELS}, got {config.data.labels!r}")
  if not 2 <= config.data.max_len <= config.model.max_len:
    raise ValueError(f"data.max_len ({config.data.max_len}) must lie in [2, model.max_len "
                     f"({config.model.max_len})]")
  if config.data.tie_weight < 0:
    raise ValueError(f"data.tie_weight must be >= 0, got {config.data.tie_weight}")
  if not config.init.policy_artifact and not config.init.allow_random_init:
    raise ValueError("init.policy_artifact is empty: give the SFT policy artifact id printed by "
                     "train_sft (e.g. sft_policy@1a2b3c4d5e6f), or set init.allow_random_init")
  if config.eval.num_prompts < 0 or config.eval.prompt_batch_size <= 0:
    raise ValueError(f"eval.num_prompts must be >= 0 and eval.prompt_batch_size > 0, got "
                     f"{config.eval.num_prompts} and {config.eval.prompt_batch_size}")
  if config.eval.max_new_tokens + 1 >= config.model.max_len:
    raise ValueError(f"eval.max_new_tokens ({config.eval.max_new_tokens}) leaves no room for a "
                     f"prompt in model.max_len ({config.model.max_len})")
  multiple = config.data.bucket_multiple or config.data.max_len
  buckets = batching.bucket_lengths(config.data.max_len, multiple=multiple)
  return Derived(batch=batch, mesh_shape=mesh_shape, loss_hparams=hparams, buckets=buckets)


# ---------------------------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------------------------


def lab_preference_records(config: ml_collections.ConfigDict) -> dict[str, list[dict[str, Any]]]:
  """Lab review preferences per split, labelled by the annotator panel (or the gold annotator)."""
  lc = sft.lab_config(config.lab)
  gold = config.data.labels == "gold"
  return {split: lab.corpora.review_preferences(lc, split, gold_labels=gold).records
          for split in ("train", "eval")}


def tokenize_pairs(records: Sequence[dict[str, Any]], tokenizer: Tokenizer,
                   max_len: int) -> list[dict[str, Any]]:
  """Token-id preference records (`data.tokenization`); over-long pairs are truncated."""
  examples = lab.as_examples(records, "preference")
  policy = ValidationPolicy(on_too_long="truncate", on_identical="drop")
  return tokenization.tokenize_preferences(examples, tokenizer, max_len=max_len, policy=policy)


# ---------------------------------------------------------------------------------------------
# Initial policy and reference.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InitSource:
  """Where the initial policy (= the reference) comes from."""
  record: Optional[dict[str, Any]]  # the SFT artifact record; None for random init
  reference_id: Optional[str]  # the artifact id; None until random-init params are hashed


def resolve_init(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> InitSource:
  """The SFT policy artifact of `init.policy_artifact` (checked), or random init when it is ""."""
  record = run_setup.resolve_policy_record(
      config.init.policy_artifact, run_setup.registry_dir(workdir, config.registry_dir))
  return InitSource(record=record, reference_id=record["artifact_id"] if record else None)


# ---------------------------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------------------------


def response_texts(tokenizer: Tokenizer, tokens_BxS: np.ndarray, mask_BxS: np.ndarray) -> list[str]:
  """Decoded responses: the masked tokens without the EOS."""
  out = []
  for tokens, mask in zip(np.asarray(tokens_BxS), np.asarray(mask_BxS)):
    ids = [int(t) for t, m in zip(tokens, mask) if m and t != tokenizer.eos_id]
    out.append(tokenizer.decode(ids).strip())
  return out


def make_sampling_eval(model: models.CausalLM, tokenizer: Tokenizer, prompts: Sequence[str], *,
                       batch_size: int, max_new_tokens: int):
  """`(policy_params, ref_params, key) -> (metrics, examples)`: gold reward and KL on `prompts`."""
  cfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0)
  kl_fn = reference_kl.make_kl_eval(model, cfg, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  prompt_ids = [chat.render_prompt(tokenizer, p) for p in prompts]
  longest = max(len(p) for p in prompt_ids)
  if longest + max_new_tokens > model.config.max_len:
    raise ValueError(f"eval prompts of {longest} tokens + eval.max_new_tokens {max_new_tokens} "
                     f"exceed model.max_len {model.config.max_len}")
  chunks = [(batching.pad_prompts(chunk, buckets=(longest,), pad_id=tokenizer.pad_id), real)
            for chunk, real in run_setup.padded_chunks(prompt_ids, batch_size)]  # one shape

  def evaluate(policy_params: PyTree, ref_params: PyTree,
               key: jax.Array) -> tuple[dict[str, float], list[dict[str, Any]]]:
    kl_sums: dict[str, float] = {}
    texts, lengths, ended = [], [], []
    for i, (padded, real) in enumerate(chunks):
      out = jax.device_get(kl_fn(policy_params, ref_params, padded.tokens_BxP, padded.mask_BxP,
                                 jax.random.fold_in(key, i)))
      for name, value_B in out.kl_B.items():  # sums over the real (non-filler) rows
        kl_sums[name] = kl_sums.get(name, 0.0) + float(np.sum(value_B[:real], dtype=np.float64))
      texts += response_texts(tokenizer, out.samples.tokens_BxS, out.samples.mask_BxS)[:real]
      lengths.append(np.asarray(out.samples.lengths_B)[:real])
      ended.append(np.asarray(out.samples.ended_with_eos_B)[:real])
    gold = lab.gold_reward(list(prompts), texts)
    metrics = {f"kl/{name}": total / len(prompts) for name, total in kl_sums.items()}
    metrics.update(gold.metrics("gold"))
    metrics["gold/grammatical_rate"] = float(np.mean([lab.is_grammatical(t) for t in texts]))
    metrics["sample/length"] = float(np.mean(np.concatenate(lengths)))
    metrics["sample/eos_rate"] = float(np.mean(np.concatenate(ended)))
    examples = [{"prompt": p, "response": t, "gold": float(g)}
                for p, t, g in list(zip(prompts, texts, gold.total))[:8]]
    return metrics, examples

  return evaluate


def _pair_batches(records: Sequence[dict[str, Any]], batch_size: int, collate: Callable[..., Any]
                  ) -> list[dict[str, np.ndarray]]:
  """Fixed-size evaluation batches; filler rows (repeats of the last record) get weight 0."""
  out = []
  for chunk, real in run_setup.padded_chunks(records, batch_size):
    batch = collate(chunk)
    batch["weight_B"][real:] = 0.0
    out.append(batch)
  return out


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def train_dpo(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains a DPO-family loss on the lab preferences; writes checkpoints, metrics, an exported
  policy artifact and `<workdir>/summary.json`. Re-running on the same workdir resumes."""
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  derived = validate_and_derive(config)
  mesh = run_setup.mesh_from_config(config.mesh)
  rules = run_setup.rules_from_config(config.mesh)
  init = resolve_init(config, workdir)

  records = lab_preference_records(config)
  tokenizer, tokenizer_path, model_cfg = run_setup.tokenizer_and_model_config(
      config, workdir, init.record,
      lambda: [f"{r['prompt']} {r['chosen']} {r['rejected']}" for r in records["train"]])
  model = models.CausalLM(model_cfg, mesh=mesh, rules=rules)
  train_records = tokenize_pairs(records["train"], tokenizer, config.data.max_len)
  eval_records = tokenize_pairs(records["eval"], tokenizer, config.data.max_len)
  eval_records = eval_records[:config.eval.num_pairs]
  dataset_id = sft.records_id("lab_dpo_pairs", {"train": train_records, "eval": eval_records})
  logger.info("DPO data %s: %d train pairs, %d eval pairs (%s labels)", dataset_id,
              len(train_records), len(eval_records), config.data.labels)

  # Policy state and the frozen reference: the same initial parameters, separate buffers.
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer)
  init_fn = functools.partial(models.init_params, model)
  state, state_shardings = train_state.create_train_state(init_fn, tx, mesh, rules,
                                                          jax.random.key(config.seed))
  abstract_params = train_state.abstract_like(state.params)

  def load_reference() -> PyTree:
    if init.record is not None:
      return registry.load_params(init.record["params_path"], abstract_params)
    return sharding.init_sharded(init_fn, mesh, rules, jax.random.key(config.seed))[0]

  ref_params = load_reference()
  ref_shardings = jax.tree.map(lambda x: x.sharding, ref_params)
  if init.record is not None:
    state = state.replace(params=registry.load_params(init.record["params_path"], abstract_params))
  reference_id = init.reference_id or artifacts.artifact_id(
      "random_init", artifacts.content_hash(ref_params))

  compute_dtype = optimizer_lib.compute_dtype_of(config.optimizer.compute_dtype)
  logp_fn = dpo.make_lm_logp_fn(model, chunked=config.algo.logprob_chunk_size > 0,
                                chunk_size=config.algo.logprob_chunk_size or 8192)
  reference_free = config.algo.loss in losses.REFERENCE_FREE_LOSSES
  precomputed = config.reference.mode == "precomputed" and not reference_free
  put = functools.partial(sharding.put_batch, mesh=mesh)
  ref_table, ref_dir = None, None
  if precomputed:
    root = pathlib.Path(config.reference.cache_dir or workdir / "reference_logprobs")
    ref_fn = reference_logprobs.make_reference_fn(logp_fn, compute_dtype=compute_dtype)
    ref_table, ref_dir, computed = reference_logprobs.load_or_compute(
        root, dataset_id=dataset_id, reference_id=reference_id,
        compute=lambda: reference_logprobs.compute_reference_logprobs(
            ref_params, train_records + eval_records, ref_fn=ref_fn,
            batch_size=config.reference.batch_size or derived.batch.global_batch_size,
            buckets=derived.buckets, pad_id=tokenizer.pad_id, dataset_id=dataset_id,
            reference_id=reference_id, put_batch=put),
        extra_metadata={"tokenizer_id": tokenizer.id, "compute_dtype": config.model.compute_dtype})
    logger.info("%s reference log-probs of %d pairs in %s",
                "computed" if computed else "loaded", len(ref_table), ref_dir)
  if precomputed or reference_free:
    del ref_params  # the reference leaves memory: training never needs it again
    ref_params = None

  collate = functools.partial(dpo.collate_dpo, buckets=derived.buckets, pad_id=tokenizer.pad_id,
                              tie_weight=config.data.tie_weight, reference=ref_table)
  loader = loader_lib.make_loader(train_records, batch_size=derived.batch.per_host_batch_size,
                                  seed=config.seed, batch_fn=collate)
  step = dpo.make_dpo_step(logp_fn, config.algo.loss, derived.loss_hparams, tx,
                           num_micro_batches=derived.batch.num_micro_batches,
                           compute_dtype=compute_dtype, schedule_fn=schedule)
  example = collate(train_records[:derived.batch.per_host_batch_size])
  step_fn = dpo.jit_dpo_step(step, state_shardings, train_state.batch_shardings_for(example, mesh),
                             mesh, ref_shardings if ref_params is not None else None)
  train_step = lambda st, batch, key: step_fn(st, batch, key, ref_params)  # noqa: E731

  # Evaluation: held-out pairs, and samples on held-out prompts (gold reward, KL to reference).
  eval_batches = _pair_batches(eval_records, derived.batch.global_batch_size, collate)
  pair_eval = jax.jit(functools.partial(dpo.pair_metrics, logp_fn=logp_fn,
                                        loss_name=config.algo.loss,
                                        loss_hparams=derived.loss_hparams,
                                        compute_dtype=compute_dtype))
  prompts = [r["prompt"] for r in lab.corpora.review_prompts(sft.lab_config(config.lab), "eval")]
  prompts = prompts[:config.eval.num_prompts]
  sampling_eval = None
  if prompts:
    sampling_eval = make_sampling_eval(model, tokenizer, prompts,
                                       batch_size=config.eval.prompt_batch_size,
                                       max_new_tokens=config.eval.max_new_tokens)
  last_examples: list[dict[str, Any]] = []

  def eval_fn(st: train_state.TrainState, step_index: int) -> dict[str, float]:
    sums: dict[str, float] = {}
    total_weight = 0.0
    for batch in eval_batches:
      weight, m = jax.device_get(pair_eval(st.params, put(batch), ref_params))
      total_weight += float(weight)
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + float(v) * float(weight)
    out = {f"pref/{k}": v / max(total_weight, 1e-12) for k, v in sums.items()}
    if sampling_eval is not None:
      reference = ref_params if ref_params is not None else load_reference()
      sampled, examples = sampling_eval(st.params, reference,
                                        jax.random.fold_in(jax.random.key(config.seed + 2),
                                                           step_index))
      del reference  # in precomputed mode the reference is dropped again right here
      out.update(sampled)
      last_examples[:] = examples
    return out

  initial = {}
  if config.eval.at_start:
    initial = eval_fn(state, 0)
    logger.info("before training: %s", json.dumps(initial, sort_keys=True))
  manager = run_setup.checkpoint_manager_from_config(config.checkpoint, workdir, name="dpo")
  writer = metrics_lib.make_writers(workdir, log_every=config.train.log_every)
  result = host_loop.run_loop(
      state=state, step_fn=train_step, batches=iter(loader), total_steps=config.train.total_steps,
      base_key=jax.random.key(config.seed + 1), writer=writer, checkpoint_manager=manager,
      checkpoint_every=config.checkpoint.every, eval_fn=eval_fn,
      eval_every=config.train.eval_every, put_batch=put,
      tokens_fn=lambda b: int(np.sum(b["segment_ids_2BxL"] != 0)), mesh=mesh, config=config,
      metadata={"seed": config.seed, "dataset_ids": [dataset_id], "reference_id": reference_id,
                "reference_mode": "none" if reference_free else config.reference.mode,
                "tokenizer_id": tokenizer.id})
  manager.close()
  writer.close()

  final = {k: v for k, v in result.history[-1].items() if k.startswith("eval/")} \
      if result.history and any(k.startswith("eval/") for k in result.history[-1]) else {}
  if not final:  # resumed at the end: evaluate the restored state
    final = {f"eval/{k}": v for k, v in eval_fn(result.state, config.train.total_steps).items()}
  record = run_setup.export_and_register(
      workdir=workdir, registry_path=run_setup.registry_dir(workdir, config.registry_dir),
      kind="policy", name="dpo_policy", params=result.state.params,
      record={"model_config": model_cfg.to_dict(), "tokenizer_path": tokenizer_path,
              "tokenizer_id": tokenizer.id, "dataset_ids": [dataset_id],
              "reference_id": reference_id, "loss": config.algo.loss,
              "loss_hparams": derived.loss_hparams,
              "step": int(jax.device_get(result.state.step)),
              "code_version": artifacts.code_version()})
  summary = {
      "artifact_id": record["artifact_id"], "dataset_id": dataset_id, "reference_id": reference_id,
      "reference_mode": "none" if reference_free else config.reference.mode,
      "reference_logprobs_dir": str(ref_dir) if ref_dir else None,
      "loss": config.algo.loss, "loss_hparams": derived.loss_hparams,
      "train_pairs": len(train_records), "eval_pairs": len(eval_records),
      "initial": {f"eval/{k}": v for k, v in initial.items()}, "final": final,
      "first_loss": result.history[0].get("loss/total") if result.history else None,
      "last_loss": result.history[-1].get("loss/total") if result.history else None,
      "examples": last_examples}
  if jax.process_index() == 0:
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  return summary
