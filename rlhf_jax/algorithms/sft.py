"""Supervised fine-tuning (SFT): next-token cross-entropy on response tokens only.

The loss is a pure function of log-probs (`rlhf_jax.losses.sft_loss`); this module adds the
forward pass (optionally over packed rows with segment-aware attention and positions), the jitted
step, evaluation, and the host-side run `train_sft(config, workdir)` that every other trainer
mirrors: validate -> mesh -> data -> tokenizer -> state -> step -> host loop -> export artifact.

Multi-host (one process per host, `rlhf_jax.experiment.start` initialises JAX's distributed
runtime): every process loads its own `per_host_batch_size` rows of each global batch, takes part
in every step, evaluation, sampling, checkpoint save and export; only process 0 writes metrics,
the tokenizer file, the artifact record and `summary.json` (see `run_setup`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlhf_jax import lab, models, ops, sampling, sharding
from rlhf_jax.algorithms import batch_math, host_loop, metrics as metrics_lib, optimizer as optimizer_lib
from rlhf_jax.algorithms import run_setup, train_state
from rlhf_jax.checkpointing import artifacts, registry
from rlhf_jax.config import model_config_from
from rlhf_jax.data import chat, loader as loader_lib, packing
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.losses import sft_loss

logger = logging.getLogger(__name__)
Batch = dict[str, jax.Array]


# ---------------------------------------------------------------------------------------------
# The objective and the step.
# ---------------------------------------------------------------------------------------------


def next_token_targets(tokens_BxL: jax.Array, segment_ids_BxL: jax.Array, loss_mask_BxL: jax.Array):
  """(targets_BxL-1, valid_BxL-1): token t+1 is predicted at t, and only counts when it is a
  response token of the SAME packed example (never across a segment boundary or into padding)."""
  targets = tokens_BxL[:, 1:]
  same = (segment_ids_BxL[:, 1:] == segment_ids_BxL[:, :-1]) & (segment_ids_BxL[:, 1:] != 0)
  return targets, same & loss_mask_BxL[:, 1:].astype(bool)


def sft_loss_fn(params: Any, batch: Batch, key: Optional[jax.Array] = None, *, model: models.CausalLM,
                chunk_size: int = 0):
  """Accumulation protocol: (sum of response-token NLL, (number of response tokens, metrics)).

  Args:
    params: CausalLM params (already cast to the compute dtype by the caller).
    batch: tokens / positions / segment_ids / loss_mask, each [B, L] int32.
    key: unused (no dropout: training and sampling log-probs must agree).
    chunk_size: > 0 computes log-probs vocabulary chunk by chunk, never materialising [B, L, V].
  """
  del key
  tokens, segments = batch["tokens"], batch["segment_ids"]
  out = model.apply({"params": params}, tokens, batch["positions"], segments, return_logits=chunk_size <= 0)
  targets, valid = next_token_targets(tokens, segments, batch["loss_mask"])
  correct = None
  if chunk_size > 0:
    unembed = models.unembedding_matrix(params, model.config)
    logp = ops.chunked_token_logprobs(out.hidden[:, :-1], unembed, targets, chunk_size=chunk_size)
  else:
    logits = out.logits[:, :-1]
    logp = ops.token_logprobs(logits, targets)
    correct = jnp.argmax(logits, axis=-1) == targets
  loss, m = sft_loss(logp, valid, "token_mean", correct_BxL=correct)
  count = jnp.sum(valid.astype(jnp.float32))
  metrics = {"loss/nll": loss, "sft/tokens": m["num_tokens"]}
  if correct is not None:
    metrics["sft/accuracy"] = m["accuracy"]
  return loss * count, (count, metrics)


def eval_nll(params: Any, batch: Batch, *, model: models.CausalLM) -> tuple[jax.Array, jax.Array]:
  """(sum of NLL, token count) of one evaluation batch."""
  loss_sum, (count, _) = sft_loss_fn(params, batch, model=model)
  return loss_sum, count


# ---------------------------------------------------------------------------------------------
# Config validation and data.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Derived:
  """Values computed once from the config (never stored back into the locked config)."""
  batch: batch_math.BatchSizes
  mesh_shape: dict[str, int]


def validate_and_derive(config: ml_collections.ConfigDict, num_devices: Optional[int] = None,
                        num_processes: Optional[int] = None) -> Derived:
  """Fails fast with a message naming the field; returns the derived sizes.

  Args:
    config: an SFT config (configs/sft.py).
    num_devices: global device count; default `jax.device_count()`. Pass a pod's count to check
      a pod config on a laptop without running it.
    num_processes: JAX processes (hosts); default `jax.process_count()`.
  """
  mesh_shape, batch = run_setup.derive_run_sizes(config, num_devices, num_processes)
  if config.train.total_steps <= 0:
    raise ValueError(f"train.total_steps must be positive, got {config.train.total_steps}")
  if config.data.seq_len > config.model.max_len:
    raise ValueError(f"data.seq_len ({config.data.seq_len}) exceeds model.max_len ({config.model.max_len})")
  if config.data.source not in ("lab",):
    raise ValueError(f"data.source must be 'lab' (the built-in corpus), got {config.data.source!r}")
  model_cfg = model_config_from(config.model, vocab_size=max(config.tokenizer.vocab_size, 1)
                                if config.model.vocab_size == -1 else None)
  run_setup.check_param_sharding(model_cfg, mesh_shape, run_setup.rules_from_config(config.mesh))
  return Derived(batch=batch, mesh_shape=mesh_shape)


def lab_config(cfg: ml_collections.ConfigDict) -> lab.LabConfig:
  return lab.LabConfig(seed=cfg.seed, num_sft_train=cfg.num_sft_train, num_sft_eval=cfg.num_sft_eval,
                       num_prompts_train=cfg.num_prompts_train, num_prompts_eval=cfg.num_prompts_eval,
                       num_preferences_train=cfg.num_preferences_train,
                       num_preferences_eval=cfg.num_preferences_eval,
                       num_arithmetic_sft_train=max(cfg.num_arithmetic_sft_train, 1),
                       num_arithmetic_sft_eval=max(cfg.num_arithmetic_sft_eval, 1))


def lab_sft_records(cfg: ml_collections.ConfigDict) -> dict[str, list[dict[str, Any]]]:
  """SFT demonstrations of the lab: reviews, plus arithmetic when its sizes are > 0."""
  lc = lab_config(cfg)
  out = {}
  for split in ("train", "eval"):
    records = lab.corpora.review_sft(lc, split)
    if getattr(cfg, f"num_arithmetic_sft_{split}") > 0:
      records += lab.corpora.arithmetic_sft(lc, split)
    out[split] = records
  return out


def tokenize_sft(records: Sequence[dict[str, Any]], tokenizer: Tokenizer) -> tuple[list[list[int]], list[list[int]]]:
  """Chat-template ids and response masks (loss only on the response and its EOS)."""
  ids, masks = [], []
  for r in records:
    t = chat.render(tokenizer, r["prompt"], r["response"])
    ids.append(t.ids)
    masks.append(t.response_mask)
  return ids, masks


def make_rows(ids: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], *, seq_len: int, pad_id: int,
              pack: bool) -> tuple[list[dict[str, np.ndarray]], float]:
  """Fixed-shape training rows (packed with first-fit, or one example per row) and their fill rate."""
  if pack:
    result = packing.pack_sequences(ids, masks, row_length=seq_len, pad_id=pad_id, overlong="truncate")
    r = result.rows
    rows = [{"tokens": r.tokens_BxL[i], "positions": r.positions_BxL[i], "segment_ids": r.segment_ids_BxL[i],
             "loss_mask": r.loss_mask_BxL[i]} for i in range(r.tokens_BxL.shape[0])]
    return rows, result.efficiency
  rows = []
  for seq, mask in zip(ids, masks):
    seq, mask = list(seq)[:seq_len], list(mask)[:seq_len]
    n = len(seq)
    tok = np.full(seq_len, pad_id, np.int32)
    tok[:n] = seq
    seg = (np.arange(seq_len) < n).astype(np.int32)
    lm = np.zeros(seq_len, np.int32)
    lm[:n] = mask
    rows.append({"tokens": tok, "positions": np.where(seg == 1, np.arange(seq_len), 0).astype(np.int32),
                 "segment_ids": seg, "loss_mask": lm})
  fill = sum(min(len(s), seq_len) for s in ids) / max(len(rows) * seq_len, 1)
  return rows, fill


def pad_rows(rows: Sequence[dict[str, np.ndarray]], multiple: int) -> list[dict[str, np.ndarray]]:
  """Appends all-zero rows (segment 0: no attention targets, no loss) up to a multiple of `multiple`."""
  rows = list(rows)
  if rows and len(rows) % multiple:
    empty = {k: np.zeros_like(v) for k, v in rows[0].items()}
    rows += [empty] * (multiple - len(rows) % multiple)
  return rows


def records_id(name: str, records: Any) -> str:
  """A dataset id from the content of in-memory records."""
  import hashlib  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256(artifacts.canonical_json(records).encode()).hexdigest()
  return f"{name}@{digest[:12]}"


# ---------------------------------------------------------------------------------------------
# Sampling-based evaluation on the lab's held-out prompts.
# ---------------------------------------------------------------------------------------------


def sample_and_grade(params: Any, model: models.CausalLM, tokenizer: Tokenizer, prompts: Sequence[str], key: jax.Array,
                     *, max_new_tokens: int, temperature: float = 1.0) -> dict[str, Any]:
  """Samples one response per prompt; gold reward, grammaticality, EOS rate, and a few examples."""
  sampler = sampling.Sampler(model, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  prompt_ids = [chat.render_prompt(tokenizer, p) for p in prompts]
  out = sampler.generate(params, prompt_ids, key, sampling.SamplingConfig(max_new_tokens=max_new_tokens,
                                                                         temperature=temperature))
  # Gathered to every host: with several processes the sampled rows live on all of them.
  tokens_BxS, ended_B, lengths_B = run_setup.to_host((out.tokens_BxS, out.ended_with_eos_B, out.lengths_B))
  responses = [s.strip() for s in tokenizer.decode_batch(tokens_BxS.tolist())]
  gold = lab.gold_reward(list(prompts), responses)
  grammatical = np.array([lab.is_grammatical(r) for r in responses], np.float64)
  return {"gold/total": float(np.mean(gold.total)), "gold/grammatical_rate": float(grammatical.mean()),
          "sample/eos_rate": float(np.mean(ended_B)),
          "sample/length": float(np.mean(lengths_B)),
          "examples": [{"prompt": p, "response": r, "gold": float(g)}
                       for p, r, g in list(zip(prompts, responses, gold.total))[:8]]}


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def train_sft(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
              records: Optional[dict[str, list[dict[str, Any]]]] = None) -> dict[str, Any]:
  """Trains SFT; writes checkpoints, metrics, an exported policy artifact and `<workdir>/summary.json`.
  Re-running on the same workdir resumes from the last checkpoint.

  Data: the built-in lab corpus, or `records` ({"train": [...], "eval": [...]}, dicts with "prompt",
  "response" and "id", e.g. rejection-sampling selections). With `config.init.params_artifact` the
  run starts from that registered policy and uses ITS tokenizer and model config.

  `workdir` may be a bucket URI (`gs://...`). With several processes every one of them calls this
  with the same config and workdir.
  """
  derived = validate_and_derive(config)  # before anything is created
  workdir = run_setup.workdir_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = run_setup.mesh_from_config(config.mesh)
  rules = run_setup.rules_from_config(config.mesh)

  dataset_name = "sft_records" if records is not None else "lab_sft"
  records = lab_sft_records(config.lab) if records is None else records
  for split in ("train", "eval"):
    if not records.get(split):
      raise ValueError(f"SFT records need a non-empty {split!r} split")
  dataset_id = records_id(dataset_name, {"train": records["train"], "eval": records["eval"]})
  init_record = None
  if config.init.params_artifact:
    init_record = registry.resolve(run_setup.registry_dir(workdir, config.registry_dir), config.init.params_artifact)
    tokenizer = Tokenizer.load(init_record["tokenizer_path"])
    model_cfg = models.ModelConfig.from_dict(init_record["model_config"])
  else:
    tokenizer = run_setup.tokenizer_from_config(
        config.tokenizer, workdir, lambda: [r["prompt"] + " " + r["response"] for r in records["train"]])
    model_cfg = model_config_from(config.model, vocab_size=tokenizer.vocab_size)
  model = models.CausalLM(model_cfg, mesh=mesh, rules=rules)

  train_ids, train_masks = tokenize_sft(records["train"], tokenizer)
  rows, fill = make_rows(train_ids, train_masks, seq_len=config.data.seq_len, pad_id=tokenizer.pad_id,
                         pack=config.data.pack)
  eval_ids, eval_masks = tokenize_sft(records["eval"], tokenizer)
  eval_rows, _ = make_rows(eval_ids, eval_masks, seq_len=config.data.seq_len, pad_id=tokenizer.pad_id,
                           pack=config.data.pack)
  logger.info("SFT data %s: %d train rows (fill %.3f), %d eval rows", dataset_id, len(rows), fill, len(eval_rows))
  loader = loader_lib.make_loader(rows, batch_size=derived.batch.per_host_batch_size, seed=config.seed)

  tx, schedule = optimizer_lib.make_optimizer(config.optimizer)
  init_fn = functools.partial(models.init_params, model)
  state, state_shardings = train_state.create_train_state(init_fn, tx, mesh, rules, jax.random.key(config.seed))
  if init_record is not None:
    params = registry.load_params(init_record["params_path"], train_state.abstract_like(state.params))
    state = state.replace(params=params)
  batch_shardings = {k: sharding.batch_sharding(mesh, 2) for k in ("tokens", "positions", "segment_ids", "loss_mask")}
  step_fn = train_state.jit_train_step(
      train_state.make_train_step(functools.partial(sft_loss_fn, model=model, chunk_size=config.train.logprob_chunk_size),
                                  tx, num_micro_batches=derived.batch.num_micro_batches,
                                  compute_dtype=optimizer_lib.compute_dtype_of(config.optimizer.compute_dtype),
                                  schedule_fn=schedule),
      state_shardings, batch_shardings, mesh)

  # Global evaluation batches; the last one is padded with empty rows (no loss tokens) to a multiple
  # of the data-parallel size, and each host stacks only its own share of every batch.
  gbs, dp = derived.batch.global_batch_size, derived.batch.data_parallel_size
  eval_chunks = [pad_rows(eval_rows[i:i + gbs], dp) for i in range(0, len(eval_rows), gbs)]
  eval_batches = [loader_lib.stack_examples(run_setup.host_rows(c)) for c in eval_chunks][:config.train.eval_batches]
  eval_jit = jax.jit(functools.partial(eval_nll, model=model))

  def eval_fn(st, step):
    del step
    total, count = 0.0, 0.0
    for b in eval_batches:
      s, c = eval_jit(st.params, sharding.put_batch(b, mesh))
      total, count = total + float(s), count + float(c)
    return {"eval/loss": total / max(count, 1.0), "eval/perplexity": float(np.exp(total / max(count, 1.0)))}

  manager = run_setup.checkpoint_manager_from_config(config.checkpoint, workdir, name="sft")
  writer = metrics_lib.make_writers(workdir, log_every=config.train.log_every)
  result = host_loop.run_loop(
      state=state, step_fn=step_fn, batches=iter(loader), total_steps=config.train.total_steps,
      base_key=jax.random.key(config.seed + 1), writer=writer, checkpoint_manager=manager,
      checkpoint_every=config.checkpoint.every, eval_fn=eval_fn, eval_every=config.train.eval_every,
      put_batch=functools.partial(sharding.put_batch, mesh=mesh),
      tokens_fn=lambda b: int(np.sum(b["segment_ids"] != 0)) * jax.process_count(),  # all hosts
      mesh=mesh, config=config,
      metadata={"seed": config.seed, "dataset_ids": [dataset_id], "tokenizer_id": tokenizer.id})
  manager.close()

  final_eval = eval_fn(result.state, config.train.total_steps)
  graded = {}
  if config.eval.num_sample_prompts > 0:
    prompts = [r["prompt"] for r in lab.corpora.review_prompts(lab_config(config.lab), "eval")]
    prompts = prompts[:config.eval.num_sample_prompts]
    graded = sample_and_grade(result.state.params, model, tokenizer, prompts, jax.random.key(config.seed + 2),
                              max_new_tokens=config.eval.max_new_tokens)
  if init_record is not None:
    tokenizer_path = init_record["tokenizer_path"]
  else:
    tokenizer_path = run_setup.tokenizer_file(config.tokenizer, workdir)
  record = run_setup.export_and_register(
      workdir=workdir, registry_path=run_setup.registry_dir(workdir, config.registry_dir), kind="policy",
      name="sft_policy", params=result.state.params,
      record={"model_config": model_cfg.to_dict(), "tokenizer_path": tokenizer_path, "tokenizer_id": tokenizer.id,
              "dataset_ids": [dataset_id], "step": int(jax.device_get(result.state.step)),
              "parent_artifact": config.init.params_artifact or None, "code_version": artifacts.code_version()})
  summary = {"artifact_id": record["artifact_id"], "dataset_id": dataset_id, "train_rows": len(rows),
             "packing_fill": fill, "final": {**final_eval, **{k: v for k, v in graded.items() if k != "examples"}},
             "first_loss": result.history[0].get("loss/nll") if result.history else None,
             "last_loss": result.history[-1].get("loss/nll") if result.history else None,
             "examples": graded.get("examples", [])}
  run_setup.write_json_side_file(workdir / "summary.json", json.dumps(summary, indent=2))
  return summary
