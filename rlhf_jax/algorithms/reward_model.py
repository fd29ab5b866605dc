"""Reward model (RM) training: the Bradley-Terry (BT) step and held-out scoring.

The RM is the decoder trunk with a scalar head (`models.ScalarModel`), its reward read at the last
real token of prompt + response. It is fitted by the BT negative log-likelihood of pairwise
preferences (`losses.bradley_terry_loss`: margins, label smoothing, per-pair weights, ties and
reward centering), one optimiser update per global batch with gradient accumulation.

Device batch layout (`RewardBatch`): pair-major [B, 2, L] arrays, index 0 the prompt + chosen row
and 1 the prompt + rejected row. The loss flattens them to 2B rows (pair b -> rows 2b, 2b + 1)
for ONE forward pass over all chosen and rejected rows. This is the [chosen; rejected]
concatenation of `data.batching.PreferenceBatch` up to a row permutation, chosen so that every
leaf has the pair dimension B in front: micro-batch splitting and data-parallel sharding then
never separate a pair from its weight or from each other.

Weights and the accumulation protocol. The loss is

  L = sum_b w_b l_b / sum_b w_b + c * mean_b (r_c,b + r_r,b)^2

over the GLOBAL batch. The step first rescales the weights to mean 1 over the global batch, so
sum_b w_b = B and both terms share the denominator B (the number of pairs); each micro-batch j
then returns (sum_{b in j} w_b l_b + c * sum_{b in j} (r_c,b + r_r,b)^2, B_j) and the accumulated
loss equals L exactly, however the pairs are spread over micro-batches.

The run, `train_reward_model(config, workdir)` (configs/reward_model.py), mirrors `sft.train_sft`:
validate -> mesh -> data (a swappable `PreferenceData` source: the lab's simulated annotators by
default, optionally aggregated by majority vote or Dawid-Skene; or HH-RLHF files) -> tokenizer
and model (random init, or the trunk of a registered SFT policy) -> state (one model, or an
ensemble from `ensemble.py`) -> jitted step -> host loop. The loop runs one evaluation interval
at a time: after each it validates, checkpoints (keeping the best by
`checkpoint.keep_best_metric`) and applies early stopping (patience counted in evaluations;
restored from metrics.jsonl on resume). The best checkpoint is then evaluated on the test split
(`eval_report.json`, reliability diagrams), calibrated on the calibration split, normalised on
reference-policy samples, exported and registered with its scoring spec (`rm_scoring`).

Shape letters: B pairs, L padded row length, N scored rows.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rlhf_jax import lab, models, sharding
from rlhf_jax.algorithms import batch_math, ensemble, host_loop, metrics as metrics_lib
from rlhf_jax.algorithms import optimizer as optimizer_lib
from rlhf_jax.algorithms import rm_scoring, run_setup, sft
from rlhf_jax.algorithms import train_state as train_state_lib
from rlhf_jax.checkpointing import artifacts, registry
from rlhf_jax.config import model_config_from
from rlhf_jax.data import batching, chat, dedup, hh_rlhf, loader as loader_lib, multi_annotator
from rlhf_jax.data import schemas, tokenization
from rlhf_jax.data.validation import ValidationPolicy
from rlhf_jax.evaluation import reward_model_eval
from rlhf_jax.losses import reward_model as rm_loss

logger = logging.getLogger(__name__)
PyTree = Any
# score_fn(params, tokens_NxL, positions_NxL, segment_ids_NxL, read_index_N) -> score_N (float32)
ScoreFn = Callable[[PyTree, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


class RewardBatch(NamedTuple):
  """Preference pairs on device, pair-major (module docstring). Index 1 of axis 1: 0 chosen,
  1 rejected."""
  tokens_Bx2xL: Any  # int32, pad id on padding
  positions_Bx2xL: Any  # int32, 0, 1, ... on real tokens
  segment_ids_Bx2xL: Any  # int32, 1 real token, 0 padding
  last_index_Bx2: Any  # int32 column of the last real token (where the reward is read)
  weight_B: Any  # float32 per-pair loss weight (annotator aggregation), >= 0
  margin_B: Any  # float32 per-pair preference-strength margin (0 when not given)
  tie_B: Any  # bool, the pair was rated a tie


def reward_batch_from_preferences(batch: batching.PreferenceBatch,
                                  margin_B: Optional[np.ndarray] = None,
                                  use_confidence: bool = False) -> RewardBatch:
  """Host `PreferenceBatch` (2B rows, [chosen; rejected]) -> pair-major `RewardBatch`.

  The pair weight is `weight_B`, times `confidence_B` when `use_confidence` (e.g. a Dawid-Skene
  posterior probability that the label is right).
  """
  rows = batch.rows
  num_pairs = batch.weight_B.shape[0]
  if rows.tokens_BxL.shape[0] != 2 * num_pairs:
    raise ValueError(f"PreferenceBatch has {rows.tokens_BxL.shape[0]} rows for {num_pairs} pairs; "
                     "expected [chosen; rejected] = 2 rows per pair")

  def pair_major(x):
    x = np.asarray(x)
    return np.stack([x[:num_pairs], x[num_pairs:]], axis=1)

  weight_B = np.asarray(batch.weight_B, np.float32)
  if use_confidence:
    weight_B = weight_B * np.asarray(batch.confidence_B, np.float32)
  if np.any(weight_B < 0) or not np.all(np.isfinite(weight_B)):
    raise ValueError(f"pair weights must be finite and >= 0, got {weight_B.tolist()}")
  margin_B = np.zeros(num_pairs, np.float32) if margin_B is None else np.asarray(margin_B,
                                                                                np.float32)
  if margin_B.shape != (num_pairs,):
    raise ValueError(f"margin_B has shape {margin_B.shape}, expected ({num_pairs},)")
  return RewardBatch(
      tokens_Bx2xL=pair_major(rows.tokens_BxL), positions_Bx2xL=pair_major(rows.positions_BxL),
      segment_ids_Bx2xL=pair_major(rows.segment_ids_BxL),
      last_index_Bx2=pair_major(rows.last_index_B), weight_B=weight_B, margin_B=margin_B,
      tie_B=np.asarray(batch.tie_B, np.bool_))


def collate_reward_batch(examples: Sequence[Mapping[str, Any]], *, buckets: Sequence[int],
                         pad_id: int, use_confidence: bool = False) -> RewardBatch:
  """Batch function over tokenised preference records.

  Each record has "prompt_ids", "chosen_ids", "rejected_ids" and optionally "weight",
  "confidence", "tie" and "margin" (None or absent: 0).
  """
  margin_B = np.asarray([float(e.get("margin") or 0.0) for e in examples], np.float32)
  return reward_batch_from_preferences(
      batching.collate_preferences(examples, buckets=buckets, pad_id=pad_id), margin_B,
      use_confidence)


def make_score_fn(model: Any) -> ScoreFn:
  """`score_fn(params, tokens, positions, segment_ids, read_index) -> score_N` of a ScalarModel."""
  def score_fn(params, tokens_NxL, positions_NxL, segment_ids_NxL, read_index_N):
    _, score_N = model.apply({"params": params}, tokens_NxL, positions_NxL, segment_ids_NxL,
                             read_index_N)
    return score_N.astype(jnp.float32)
  return score_fn


def pair_scores(score_fn: ScoreFn, params: PyTree, batch: RewardBatch) -> jax.Array:
  """Rewards [B, 2] (chosen, rejected) from ONE forward pass over the 2B flattened rows."""
  num_pairs = batch.tokens_Bx2xL.shape[0]
  flat = lambda x: x.reshape((2 * num_pairs,) + x.shape[2:])  # noqa: E731  (pair b -> 2b, 2b+1)
  score_N = score_fn(params, flat(batch.tokens_Bx2xL), flat(batch.positions_Bx2xL),
                     flat(batch.segment_ids_Bx2xL), flat(batch.last_index_Bx2))
  return score_N.reshape(num_pairs, 2)


def reward_model_loss(params: PyTree, batch: RewardBatch, key: Optional[jax.Array] = None, *,
                      score_fn: ScoreFn, label_smoothing: float = 0.0, center_coef: float = 0.0,
                      use_margin: bool = False, use_weights: bool = True, use_ties: bool = True
                      ) -> tuple[jax.Array, tuple[jax.Array, dict[str, jax.Array]]]:
  """BT loss of one micro-batch in the accumulation protocol: (loss_sum, (num_pairs, metrics)).

  `batch.weight_B` must already be rescaled to mean 1 over the global batch (`rescale_weights`);
  see the module docstring for why this makes accumulation exact.

  Args:
    params: RM parameters.
    batch: the micro-batch.
    key: unused (the forward pass is deterministic); kept for the step protocol.
    score_fn: see `make_score_fn`.
    label_smoothing, center_coef: as in `losses.bradley_terry_loss`.
    use_margin, use_weights, use_ties: whether the batch's margins, weights and tie flags enter
      the loss (off: margin 0, weight 1, every pair decided).

  Returns:
    (loss_sum, (denominator, metrics)) with denominator the number of pairs; metrics are the
    BT loss's "loss/bradley_terry", "loss/center" and "rewards/*".
  """
  del key
  r_Bx2 = pair_scores(score_fn, params, batch)
  r_c_B, r_r_B = r_Bx2[:, 0], r_Bx2[:, 1]
  num_pairs = r_c_B.shape[0]
  weight_B = batch.weight_B.astype(jnp.float32) if use_weights else jnp.ones((num_pairs,),
                                                                             jnp.float32)
  _, metrics = rm_loss.bradley_terry_loss(
      r_c_B, r_r_B, margin_B=batch.margin_B if use_margin else None,
      label_smoothing=label_smoothing, weights_B=weight_B if use_weights else None,
      tie_B=batch.tie_B if use_ties else None, center_coef=center_coef)
  # bradley_terry_loss returns the weighted MEAN; times sum(w) gives the micro-batch's weighted SUM.
  loss_sum = (metrics["loss/bradley_terry"] * jnp.sum(weight_B)
              + center_coef * metrics["loss/center"] * num_pairs)
  metrics = {k: v for k, v in metrics.items() if k != "loss"}
  return loss_sum, (jnp.asarray(num_pairs, jnp.float32), metrics)


def rescale_weights(batch: RewardBatch) -> RewardBatch:
  """Weights divided by their mean over the (global) batch: sum_b w_b = B afterwards."""
  weight_B = batch.weight_B.astype(jnp.float32)
  mean = jnp.maximum(jnp.mean(weight_B), jnp.finfo(jnp.float32).tiny)
  return batch._replace(weight_B=weight_B / mean)


def reward_model_step(state: train_state_lib.TrainState, batch: RewardBatch, key: jax.Array, *,
                      loss_fn: Callable[..., Any], tx: optax.GradientTransformation,
                      num_micro_batches: int = 1, compute_dtype: Any = None,
                      schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None
                      ) -> tuple[train_state_lib.TrainState, dict[str, jax.Array]]:
  """One optimiser update of the RM: rescale weights, accumulate over micro-batches, apply.

  Metrics: "loss/total" (the global-batch objective), "loss/bradley_terry", "loss/center",
  "rewards/{accuracy,margin,chosen,rejected,std}", "optim/grad_norm", "optim/lr".
  """
  return train_state_lib.train_step(state, rescale_weights(batch), key, loss_fn=loss_fn, tx=tx,
                                    num_micro_batches=num_micro_batches,
                                    compute_dtype=compute_dtype, schedule_fn=schedule_fn)


def make_loss_fn(score_fn: ScoreFn, loss_config: Any) -> Callable[..., Any]:
  """`reward_model_loss` with the `loss` config section's fields bound."""
  return functools.partial(
      reward_model_loss, score_fn=score_fn, label_smoothing=float(loss_config.label_smoothing),
      center_coef=float(loss_config.center_coef), use_margin=bool(loss_config.use_margin),
      use_weights=bool(loss_config.use_weights), use_ties=bool(loss_config.use_ties))


def make_step(loss_fn: Callable[..., Any], tx: optax.GradientTransformation, *,
              state_shardings: Any, batch_shardings: Any, mesh: jax.sharding.Mesh,
              num_micro_batches: int = 1, compute_dtype: Any = None,
              schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None) -> Callable[..., Any]:
  """The jitted `step(state, batch, key) -> (state, metrics)`, state donated, shardings explicit."""
  step = functools.partial(reward_model_step, loss_fn=loss_fn, tx=tx,
                           num_micro_batches=num_micro_batches, compute_dtype=compute_dtype,
                           schedule_fn=schedule_fn)
  return train_state_lib.jit_train_step(step, state_shardings, batch_shardings, mesh)


def batch_shardings(mesh: jax.sharding.Mesh) -> RewardBatch:
  """Shardings of a `RewardBatch`: the pair dimension over the data-parallel axes."""
  example = RewardBatch(*(np.zeros((1,) * n) for n in (3, 3, 3, 2, 1, 1, 1)))
  return train_state_lib.batch_shardings_for(example, mesh)


def make_pair_scorer(score_fn: ScoreFn) -> Callable[[PyTree, RewardBatch], jax.Array]:
  """Jitted `(params, batch) -> rewards [B, 2]` for held-out evaluation."""
  return jax.jit(functools.partial(pair_scores, score_fn))


def score_pairs(pair_scorer: Callable[[PyTree, RewardBatch], jax.Array], params: PyTree,
                batches: Sequence[tuple[RewardBatch, int]]) -> tuple[np.ndarray, np.ndarray]:
  """(r_chosen, r_rejected) float64 over `(batch, num_real_pairs)` items, padding rows dropped.

  Every batch is dispatched before any result is fetched, so the device never waits on the host.
  """
  outs = [(pair_scorer(params, batch), n) for batch, n in batches]
  r_Bx2 = np.concatenate([np.asarray(run_setup.to_host(o), np.float64)[:n] for o, n in outs])
  return r_Bx2[:, 0], r_Bx2[:, 1]


# ---------------------------------------------------------------------------------------------
# Config validation.
# ---------------------------------------------------------------------------------------------

LABELS = ("annotators", "gold")
AGGREGATIONS = ("none", "majority", "dawid_skene")
CALIBRATIONS = ("", "platt", "isotonic")


@dataclasses.dataclass(frozen=True)
class Derived:
  """Values computed once from the config (never stored back into the locked config)."""
  batch: batch_math.BatchSizes
  mesh_shape: dict[str, int]
  buckets: tuple[int, ...]  # padded row lengths


def validate_and_derive(config: ml_collections.ConfigDict, num_devices: Optional[int] = None,
                        num_processes: Optional[int] = None) -> Derived:
  """Fails fast with a message naming the field; returns the derived sizes (configs/reward_model.py)."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  mesh_shape = run_setup.mesh_shape_from_config(config.mesh, num_devices)
  batch = run_setup.batch_sizes_from_config(config.batch, mesh_shape, num_processes)
  optimizer_lib.validate_optimizer_config(config.optimizer)
  if config.optimizer.compute_dtype != config.model.compute_dtype:
    raise ValueError(f"optimizer.compute_dtype ({config.optimizer.compute_dtype!r}) must equal "
                     f"model.compute_dtype ({config.model.compute_dtype!r})")
  checks = [
      (config.train.total_steps > 0, "train.total_steps must be positive"),
      (config.train.eval_every > 0, "train.eval_every must be positive"),
      (config.data.source in DATA_SOURCES, f"data.source must be one of {sorted(DATA_SOURCES)}"),
      (config.data.labels in LABELS, f"data.labels must be one of {LABELS}"),
      (config.data.aggregation in AGGREGATIONS, f"data.aggregation must be one of {AGGREGATIONS}"),
      (1 <= config.data.annotators_per_pair <= len(lab.DEFAULT_PANEL),
       f"data.annotators_per_pair must lie in [1, {len(lab.DEFAULT_PANEL)}]"),
      (0.0 < config.data.heldout_fraction < 1.0, "data.heldout_fraction must lie in (0, 1)"),
      (2 <= config.data.max_len <= config.model.max_len,
       f"data.max_len must lie in [2, model.max_len ({config.model.max_len})]"),
      (0.0 <= config.loss.label_smoothing <= 0.5, "loss.label_smoothing must lie in [0, 0.5]"),
      (config.loss.center_coef >= 0.0, "loss.center_coef must be >= 0"),
      (config.ensemble.size >= 1, "ensemble.size must be >= 1"),
      (config.train.early_stopping_mode in ("max", "min"),
       "train.early_stopping_mode must be 'max' or 'min'"),
      (config.train.early_stopping_patience >= 0, "train.early_stopping_patience must be >= 0"),
      (not config.train.early_stopping_metric or config.train.early_stopping_metric.startswith(
          "eval/"), "train.early_stopping_metric must be an 'eval/...' metric or ''"),
      (config.eval.calibration in CALIBRATIONS, f"eval.calibration must be one of {CALIBRATIONS}"),
      (config.eval.num_reference_samples >= 2, "eval.num_reference_samples must be >= 2"),
      (len(config.eval.score_batch_sizes) > 0 and min(config.eval.score_batch_sizes) >= 1,
       "eval.score_batch_sizes must be positive ints"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f"{message} (configs/reward_model.py)")
  if not config.init.sft_checkpoint:
    model_cfg = model_config_from(config.model, vocab_size=max(config.tokenizer.vocab_size, 1)
                                  if config.model.vocab_size == -1 else None)
    run_setup.check_param_sharding(model_cfg, mesh_shape, run_setup.rules_from_config(config.mesh))
  buckets = batching.bucket_lengths(config.data.max_len,
                                    multiple=config.data.bucket_multiple or config.data.max_len)
  return Derived(batch=batch, mesh_shape=mesh_shape, buckets=buckets)


# ---------------------------------------------------------------------------------------------
# Data sources: config -> PreferenceData. Swap one in with `train_reward_model(data_fn=...)`.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PreferenceData:
  """Prompt-disjoint preference splits of one run.

  validation drives early stopping and the best checkpoint, calibration fits the calibration maps
  and (its responses) the normalisation, test gets the final report. Examples may carry gold
  rewards in `metadata["gold_chosen"]` / `metadata["gold_rejected"]`.
  """
  train: list[schemas.PreferenceExample]
  validation: list[schemas.PreferenceExample]
  calibration: list[schemas.PreferenceExample]
  test: list[schemas.PreferenceExample]
  dataset_id: str
  info: dict[str, float] = dataclasses.field(default_factory=dict)


def label_gold_accuracy(examples: Sequence[schemas.PreferenceExample]) -> float:
  """Share of decided examples whose chosen response has the higher gold reward (gold ties left
  out): how good the training labels themselves are."""
  votes = [e.metadata["gold_chosen"] > e.metadata["gold_rejected"] for e in examples
           if not e.tie and "gold_chosen" in e.metadata
           and e.metadata["gold_chosen"] != e.metadata["gold_rejected"]]
  return float(np.mean(votes)) if votes else float("nan")


def _lab_split(config: ml_collections.ConfigDict, lc: lab.LabConfig,
               split: str) -> list[schemas.PreferenceExample]:
  """Lab pairs of one split, labelled by the panel (or gold) and aggregated as configured."""
  pairs = lab.corpora.review_pairs(lc, split)
  gold = config.data.labels == "gold"
  labelled = lab.corpora.review_preferences(lc, split, gold_labels=gold, pairs=pairs)
  if config.data.aggregation == "none":
    return lab.as_examples(labelled.records, "preference")
  prompts, a, b = pairs
  panel = (lab.GOLD_ANNOTATOR,) if gold else lc.panel
  prefix = f"lab-reviews-{split}"
  comparisons = lab.as_examples(lab.comparison_records(prompts, a, b, labelled.labels, panel,
                                                       id_prefix=prefix), "comparison")
  out = []
  for e in multi_annotator.aggregate_comparisons(comparisons, method=config.data.aggregation):
    i = int(e.id.rsplit("-", 1)[1])
    g_a, g_b = float(labelled.gold_a_I[i]), float(labelled.gold_b_I[i])
    chosen_is_a = e.chosen == a[i]
    out.append(dataclasses.replace(e, source=lab.corpora.REVIEW_SOURCE, metadata={
        **e.metadata, "item": i, "gold_chosen": g_a if chosen_is_a else g_b,
        "gold_rejected": g_b if chosen_is_a else g_a}))
  return out


def lab_preference_data(config: ml_collections.ConfigDict) -> PreferenceData:
  """Lab review pairs: "train" split for training; the held-out "eval" split's pairs are dealt
  by item index into validation (i % 3 == 0), calibration (1) and test (2)."""
  lc = dataclasses.replace(sft.lab_config(config.lab),
                           annotators_per_pair=config.data.annotators_per_pair)
  train = _lab_split(config, lc, "train")
  held = _lab_split(config, lc, "eval")
  parts = [[e for e in held if e.metadata["item"] % 3 == r] for r in range(3)]
  dataset_id = sft.records_id("lab_preferences", {
      "train": [e.to_dict() for e in train], "eval": [e.to_dict() for e in held]})
  return PreferenceData(train, *parts, dataset_id=dataset_id,
                        info={"label_gold_accuracy": label_gold_accuracy(train)})


def hh_rlhf_preference_data(config: ml_collections.ConfigDict) -> PreferenceData:
  """Anthropic HH-RLHF files (`data.paths`), split by prompt: `heldout_fraction` of the prompts
  are held out and dealt into validation, calibration and test thirds."""
  examples = []
  for path in [p.strip() for p in config.data.paths.split(",") if p.strip()]:
    examples += hh_rlhf.read_hh_rlhf(path)[0]
  if config.data.max_pairs:
    examples = examples[:config.data.max_pairs]
  if not examples:
    raise ValueError(f"data.paths {config.data.paths!r} hold no usable HH-RLHF pairs")
  train, held = dedup.split_by_prompt(examples, config.data.heldout_fraction, seed=config.seed)
  rest, validation = dedup.split_by_prompt(held, 1.0 / 3.0, seed=config.seed + 1)
  test, calibration = dedup.split_by_prompt(rest, 0.5, seed=config.seed + 2)
  dataset_id = sft.records_id("hh_rlhf", [e.to_dict() for e in examples])
  return PreferenceData(train, validation, calibration, test, dataset_id=dataset_id)


DATA_SOURCES: dict[str, Callable[[ml_collections.ConfigDict], PreferenceData]] = {
    "lab": lab_preference_data, "hh_rlhf": hh_rlhf_preference_data}


def tokenize_examples(examples: Sequence[schemas.PreferenceExample], tokenizer: Any,
                      max_len: int) -> list[dict[str, Any]]:
  """Token-id records (`data.tokenization`; over-long pairs truncated) keeping gold rewards."""
  policy = ValidationPolicy(on_too_long="truncate", on_identical="drop")
  records = tokenization.tokenize_preferences(examples, tokenizer, max_len=max_len, policy=policy)
  metadata = {e.id: e.metadata for e in examples}
  for r in records:
    md = metadata[r["id"]]
    r["gold_chosen"], r["gold_rejected"] = md.get("gold_chosen"), md.get("gold_rejected")
  return records


# ---------------------------------------------------------------------------------------------
# Evaluation on held-out records.
# ---------------------------------------------------------------------------------------------


def eval_batches(records: Sequence[dict[str, Any]], *, global_batch_size: int,
                 buckets: Sequence[int], pad_id: int, mesh: jax.sharding.Mesh
                 ) -> list[tuple[RewardBatch, int]]:
  """Device batches of `global_batch_size` pairs (the last one topped up with repeats of its
  first pair), each with its number of real pairs; every host holds its own rows."""
  out = []
  for start in range(0, len(records), global_batch_size):
    chunk = list(records[start:start + global_batch_size])
    real = len(chunk)
    chunk += [chunk[0]] * (global_batch_size - real)
    host = collate_reward_batch(run_setup.host_rows(chunk), buckets=buckets, pad_id=pad_id)
    out.append((sharding.put_batch(host, mesh), real))
  return out


def evaluate_records(records: Sequence[dict[str, Any]], r_chosen: np.ndarray, r_rejected: np.ndarray,
                     calibrations: Optional[Mapping[str, Any]] = None,
                     num_bins: int = 10) -> dict[str, Any]:
  """`reward_model_eval.evaluate_preferences` with ties, annotators, sources and gold of records."""
  gold = all(r.get("gold_chosen") is not None for r in records)
  return reward_model_eval.evaluate_preferences(
      r_chosen, r_rejected, tie_B=[bool(r["tie"]) for r in records],
      annotator_ids=[r.get("annotator_id") or "(aggregated)" for r in records],
      sources=[r.get("source") or "(unknown)" for r in records],
      gold_chosen_B=[r["gold_chosen"] for r in records] if gold else None,
      gold_rejected_B=[r["gold_rejected"] for r in records] if gold else None,
      calibrations=calibrations, num_bins=num_bins)


@dataclasses.dataclass
class EarlyStopping:
  """Stops after `patience` evaluations without an improvement larger than `min_delta`."""
  mode: str = "max"
  patience: int = 0  # 0: never stop
  min_delta: float = 0.0
  best: Optional[float] = None
  bad_evals: int = 0

  def update(self, value: float) -> bool:
    """Records one evaluation; True when training should stop."""
    better = (value > self.best + self.min_delta if self.mode == "max"
              else value < self.best - self.min_delta) if self.best is not None else True
    if math.isfinite(value) and better:
      self.best, self.bad_evals = value, 0
    else:
      self.bad_evals += 1
    return self.patience > 0 and self.bad_evals >= self.patience


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def _load_trunk(record: Mapping[str, Any], params: PyTree, model_cfg: models.ModelConfig,
                mesh: jax.sharding.Mesh, rules: sharding.LogicalRules,
                num_members: Optional[int]) -> PyTree:
  """RM params whose decoder trunk is the policy artifact's (every member's, for an ensemble)."""
  lm = models.CausalLM(model_cfg, mesh=mesh, rules=rules)
  boxed = jax.eval_shape(functools.partial(models.init_params, lm), jax.random.key(0))
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        nn.unbox(boxed), sharding.logical_shardings(boxed, mesh, rules))
  lm_params = registry.load_params(record["params_path"], target)
  if num_members is None:
    new = models.scalar_params_from_lm(lm_params, params)
  else:
    member0 = ensemble.member(params, 0)
    trunk = models.scalar_params_from_lm(lm_params, member0)["decoder"]
    new = dict(params, decoder=jax.tree.map(
        lambda x: jnp.broadcast_to(x[None], (num_members,) + x.shape), trunk))
  return jax.device_put(new, jax.tree.map(lambda x: x.sharding, params))


def train_reward_model(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       data_fn: Optional[Callable[[ml_collections.ConfigDict], PreferenceData]] = None
                       ) -> dict[str, Any]:
  """Trains an RM (or an ensemble); writes checkpoints, metrics, `eval_report.json`,
  `reliability*.png`, an exported `reward_model` artifact with its scoring spec, and
  `summary.json`. Re-running on the same workdir resumes from the last checkpoint.

  Args:
    config: configs/reward_model.py.
    workdir: run directory.
    data_fn: `config -> PreferenceData`; default `DATA_SOURCES[config.data.source]`.

  Returns:
    The summary: artifact id, dataset id, best step, stop reason, validation and test reports.
  """
  workdir = run_setup.workdir_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  derived = validate_and_derive(config)
  mesh = run_setup.mesh_from_config(config.mesh)
  rules = run_setup.rules_from_config(config.mesh)
  registry_path = run_setup.registry_dir(workdir, config.registry_dir)

  data = (data_fn or DATA_SOURCES[config.data.source])(config)
  init_record = None
  if config.init.sft_checkpoint:
    init_record = registry.resolve(registry_path, config.init.sft_checkpoint)
    for key in ("params_path", "model_config", "tokenizer_path"):
      if key not in init_record:
        raise ValueError(f"init.sft_checkpoint {config.init.sft_checkpoint!r}: its record lacks "
                         f"{key!r}; is it a policy artifact written by train_sft?")
    tokenizer = run_setup.load_tokenizer(init_record["tokenizer_path"])
    tokenizer_path = init_record["tokenizer_path"]
    model_cfg = models.ModelConfig.from_dict(init_record["model_config"]).replace(
        compute_dtype=config.model.compute_dtype, remat=config.model.remat).validate()
  else:
    texts = lambda: [chat.render_text(e.prompt, r) for e in data.train  # noqa: E731
                     for r in (e.chosen, e.rejected)]
    tokenizer = run_setup.tokenizer_from_config(config.tokenizer, workdir, texts)
    tokenizer_path = config.tokenizer.path or str(workdir / "tokenizer.model")
    model_cfg = model_config_from(config.model, vocab_size=tokenizer.vocab_size)
  splits = {name: tokenize_examples(getattr(data, name), tokenizer, config.data.max_len)
            for name in ("train", "validation", "calibration", "test")}
  for name, records in splits.items():
    if not records:
      raise ValueError(f"the {name} split of data source {config.data.source!r} is empty")
  logger.info("RM data %s: %s pairs", data.dataset_id, {k: len(v) for k, v in splits.items()})

  model = models.ScalarModel(model_cfg, mesh=mesh, rules=rules)
  init_fn = functools.partial(models.init_params, model)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer)
  score_fn = make_score_fn(model)
  loss_fn = make_loss_fn(score_fn, config.loss)
  step_kwargs = dict(batch_shardings=batch_shardings(mesh), mesh=mesh,
                     num_micro_batches=derived.batch.num_micro_batches,
                     compute_dtype=optimizer_lib.compute_dtype_of(config.optimizer.compute_dtype),
                     schedule_fn=schedule)
  num_members = config.ensemble.size if config.ensemble.size > 1 else None
  if num_members is None:
    state, state_sh = train_state_lib.create_train_state(init_fn, tx, mesh, rules,
                                                     jax.random.key(config.seed))
    step_fn = make_step(loss_fn, tx, state_shardings=state_sh, **step_kwargs)
    eval_score_fn = score_fn
  else:
    keys = jax.vmap(lambda m: jax.random.fold_in(jax.random.key(config.seed), m))(
        jnp.arange(num_members))
    state, state_sh, ens_tx = ensemble.create_ensemble_state(init_fn, tx, mesh, rules, keys)
    step_fn = ensemble.make_ensemble_step(loss_fn, ens_tx, state_shardings=state_sh,
                                          bootstrap=config.ensemble.bootstrap, **step_kwargs)
    eval_score_fn = lambda p, *rows: ensemble.mean_and_std(  # noqa: E731
        ensemble.ensemble_score_fn(score_fn)(p, *rows))[0]
  if init_record is not None:
    state = state.replace(params=_load_trunk(init_record, state.params, model_cfg, mesh, rules,
                                             num_members))

  collate = functools.partial(collate_reward_batch, buckets=derived.buckets,
                              pad_id=tokenizer.pad_id, use_confidence=config.loss.use_confidence)
  loader = loader_lib.make_loader(splits["train"], batch_size=derived.batch.per_host_batch_size,
                                  seed=config.seed, batch_fn=collate)
  batches = {name: eval_batches(splits[name], global_batch_size=derived.batch.global_batch_size,
                                buckets=derived.buckets, pad_id=tokenizer.pad_id, mesh=mesh)
             for name in ("validation", "calibration", "test")}
  pair_scorer = make_pair_scorer(eval_score_fn)

  def eval_fn(st, step):
    del step
    r_c, r_r = score_pairs(pair_scorer, st.params, batches["validation"])
    flat = reward_model_eval.flat_metrics(evaluate_records(splits["validation"], r_c, r_r,
                                                           num_bins=config.eval.num_bins))
    return {f"eval/{k}": v for k, v in flat.items() if math.isfinite(v)}

  manager = run_setup.checkpoint_manager_from_config(config.checkpoint, workdir, name=config.name)
  writer = metrics_lib.make_writers(workdir)
  stopper = EarlyStopping(config.train.early_stopping_mode, config.train.early_stopping_patience,
                          config.train.early_stopping_min_delta)
  metric = config.train.early_stopping_metric
  total, every = config.train.total_steps, config.train.eval_every
  loop_args = dict(step_fn=step_fn, batches=iter(loader), base_key=jax.random.key(config.seed + 1),
                   writer=writer, checkpoint_manager=manager,
                   checkpoint_every=config.checkpoint.every, eval_fn=eval_fn, eval_every=every,
                   put_batch=functools.partial(sharding.put_batch, mesh=mesh),
                   tokens_fn=lambda b: int(np.sum(b.segment_ids_Bx2xL != 0)) * jax.process_count(),
                   mesh=mesh, config=config,
                   metadata={"seed": config.seed, "dataset_ids": [data.dataset_id],
                             "tokenizer_id": tokenizer.id})
  # The host loop runs one evaluation interval at a time, so that early stopping can end the run
  # between intervals; only the first call resumes from a checkpoint.
  stop_reason, first, history = "total_steps", True, []
  while int(jax.device_get(state.step)) < total:
    end = min((int(jax.device_get(state.step)) // every + 1) * every, total)
    result = host_loop.run_loop(state=state, total_steps=end, resume=first, **loop_args)
    if first and result.start_step > 0 and metric:
      for record in _previous_evals(workdir, result.start_step):
        if metric in record:
          stopper.update(float(record[metric]))
    state, first = result.state, False
    history += result.history
    evals = [h[metric] for h in result.history if metric in h] if metric else []
    stop = any([stopper.update(v) for v in evals])
    if _broadcast_flag(stop) and int(jax.device_get(state.step)) < total:
      stop_reason = f"early_stopping: {metric} did not improve for {stopper.bad_evals} evaluations"
      break
  manager.wait()
  best_step = manager.best_step()
  final_step = int(jax.device_get(state.step))
  if best_step is not None and best_step != final_step:
    state, _ = manager.restore(best_step, train_state_lib.abstract_like(state))
  manager.close()
  best_step = final_step if best_step is None else best_step
  logger.info("RM training stopped at step %d (%s); using step %d", final_step, stop_reason,
              best_step)
  return _finish(config, workdir, registry_path=registry_path, state=state, model_cfg=model_cfg,
                 tokenizer=tokenizer, tokenizer_path=tokenizer_path, data=data, splits=splits,
                 batches=batches, pair_scorer=pair_scorer, num_members=num_members,
                 buckets=derived.buckets, best_step=best_step, final_step=final_step,
                 stop_reason=stop_reason, history=history)


def _previous_evals(workdir: Any, step: int) -> list[dict[str, float]]:
  """Evaluation records at steps <= `step` of a resumed run (to restore the early-stopping count)."""
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [r for r in metrics_lib.read_jsonl(path) if r["step"] <= step]


def _broadcast_flag(flag: bool) -> bool:
  """Process 0's decision on every process (all hosts stop at the same step)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _finish(config: ml_collections.ConfigDict, workdir: Any, *, registry_path: Any, state: Any,
            model_cfg: models.ModelConfig, tokenizer: Any, tokenizer_path: str,
            data: PreferenceData, splits: Mapping[str, list[dict[str, Any]]],
            batches: Mapping[str, Any], pair_scorer: Callable[..., Any],
            num_members: Optional[int], buckets: Sequence[int], best_step: int, final_step: int,
            stop_reason: str, history: list[dict[str, float]]) -> dict[str, Any]:
  """Final reports, calibration maps, normalisation, export and summary of the chosen state."""
  scores = {name: score_pairs(pair_scorer, state.params, batches[name])
            for name in ("validation", "calibration", "test")}
  calibrations = {kind: reward_model_eval.fit_pairwise_calibration(
      *scores["calibration"], kind, tie_B=[r["tie"] for r in splits["calibration"]])
                  for kind in ("platt", "isotonic")}
  num_bins = config.eval.num_bins
  reports = {name: evaluate_records(splits[name], *scores[name],
                                    calibrations=calibrations if name == "test" else None,
                                    num_bins=num_bins)
             for name in ("validation", "test")}
  stored = calibrations.get(config.eval.calibration)
  test_tie = [r["tie"] for r in splits["test"]]
  if run_setup.is_main_process():
    reward_model_eval.write_reliability_diagram(*scores["test"], workdir / "reliability.png",
                                                tie_B=test_tie, num_bins=num_bins,
                                                title="test, raw")
    if stored is not None:
      reward_model_eval.write_reliability_diagram(
          *scores["test"], workdir / f"reliability_{config.eval.calibration}.png", tie_B=test_tie,
          calibration=stored, num_bins=num_bins, title=f"test, {config.eval.calibration}")

  # Normalisation: distinct responses of the calibration split, i.e. samples of the policy that
  # wrote the pairs (the lab's base distribution = what the SFT reference imitates).
  rows = list(dict.fromkeys(tuple(r["prompt_ids"] + r[k]) for r in splits["calibration"]
                            for k in ("chosen_ids", "rejected_ids")))[:config.eval.num_reference_samples]
  # Scoring lengths: the training buckets, then powers of two up to the model's max_len (longer
  # inputs than in training, e.g. PPO prompts + responses, are scored rather than refused).
  longer = [2 ** k for k in range(max(buckets).bit_length(), model_cfg.max_len.bit_length())]
  lengths = tuple(buckets) + tuple(n for n in longer if max(buckets) < n <= model_cfg.max_len)
  score_buckets = rm_scoring.Buckets(tuple(config.eval.score_batch_sizes), lengths)
  scorer = rm_scoring.RewardModelScorer(state.params, model_cfg, tokenizer, buckets=score_buckets,
                                        name=config.name, version="unversioned")
  normalisation = rm_scoring.fit_normalisation(scorer.score_ids(rows)["raw"])
  spec = rm_scoring.make_spec(model_cfg, buckets=score_buckets, normalisation=normalisation,
                              calibration=stored, name=config.name, ensemble_size=num_members,
                              extra={"tokenizer_path": tokenizer_path,
                                     "tokenizer_id": tokenizer.id})
  record = run_setup.export_and_register(
      workdir=workdir, registry_path=registry_path, kind="reward_model", name=config.name,
      params=state.params,
      record={"model_config": model_cfg.to_dict(), "tokenizer_path": tokenizer_path,
              "tokenizer_id": tokenizer.id, "dataset_ids": [data.dataset_id], "step": best_step,
              "spec": spec, "code_version": artifacts.code_version()})
  spec["version"] = record["artifact_id"]
  if run_setup.is_main_process():
    rm_scoring.save_spec(spec, rm_scoring.spec_path(record["params_path"]))
  report = {"validation": reports["validation"], "test": reports["test"], "data": data.info,
            "calibration": {k: v.to_dict() for k, v in calibrations.items()},
            "normalisation": normalisation.to_dict(), "best_step": best_step,
            "final_step": final_step, "stop_reason": stop_reason}
  run_setup.write_json_side_file(workdir / "eval_report.json", reward_model_eval.to_json(report))
  summary = {"artifact_id": record["artifact_id"], "dataset_id": data.dataset_id,
             "pairs": {k: len(v) for k, v in splits.items()}, "best_step": best_step,
             "final_step": final_step, "stop_reason": stop_reason, "data": data.info,
             "validation": reward_model_eval.flat_metrics(reports["validation"]),
             "test": reward_model_eval.flat_metrics(reports["test"]),
             "normalisation": normalisation.to_dict(),
             "first_loss": history[0].get("loss/total") if history else None,
             "last_loss": history[-1].get("loss/total") if history else None}
  run_setup.write_json_side_file(workdir / "summary.json", reward_model_eval.to_json(summary))
  return summary
