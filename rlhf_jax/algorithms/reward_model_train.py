"""The host-side reward-model (RM) run: `train_reward_model(config, workdir)`.

The pure and jitted parts (batch layout, Bradley-Terry (BT) loss, step) are `reward_model`; this
module is the run (configs/reward_model.py), mirroring `sft.train_sft`: validate -> mesh -> data
(a swappable `PreferenceData` source: the lab's simulated annotators by default, optionally
aggregated by majority vote or Dawid-Skene; or HH-RLHF files) -> tokenizer and model (random
init, or the trunk of a registered SFT policy) -> state (one model, or an ensemble from
`ensemble.py`) -> jitted step -> host loop. The loop runs one evaluation interval at a time:
after each it validates, checkpoints (keeping the best by `checkpoint.keep_best_metric`) and
applies early stopping (patience counted in evaluations; restored from metrics.jsonl on resume).
The best checkpoint is then evaluated on the test split (`eval_report.json`, reliability
diagrams), calibrated on the calibration split, normalised on reference-policy samples, exported
and registered with its scoring spec (`rm_scoring`).

Shape letters: B pairs, L padded row length, N scored rows.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlhf_jax import lab, models, sharding
from rlhf_jax.algorithms import batch_math, ensemble, host_loop, metrics as metrics_lib
from rlhf_jax.algorithms import optimizer as optimizer_lib
from rlhf_jax.algorithms import reward_model, rm_scoring, run_setup, sft
from rlhf_jax.algorithms import train_state as train_state_lib
from rlhf_jax.checkpointing import artifacts, registry
from rlhf_jax.config import model_config_from
from rlhf_jax.data import batching, dedup, hh_rlhf, loader as loader_lib, multi_annotator
from rlhf_jax.data import chat, schemas, tokenization
from rlhf_jax.data.validation import ValidationPolicy
from rlhf_jax.evaluation import reward_model_eval

logger = logging.getLogger(__name__)
PyTree = Any

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
  sizes = run_setup.derive_run_sizes(config, num_devices, num_processes)
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
  if not config.init.policy_artifact:
    model_cfg = model_config_from(config.model, vocab_size=max(config.tokenizer.vocab_size, 1)
                                  if config.model.vocab_size == -1 else None)
    run_setup.check_param_sharding(model_cfg, sizes.mesh_shape,
                                   run_setup.rules_from_config(config.mesh))
  buckets = batching.bucket_lengths(config.data.max_len,
                                    multiple=config.data.bucket_multiple or config.data.max_len)
  return Derived(batch=sizes.batch, mesh_shape=sizes.mesh_shape, buckets=buckets)


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


def score_pairs(pair_scorer: Callable[[PyTree, reward_model.RewardBatch], jax.Array],
                params: PyTree, batches: Sequence[tuple[reward_model.RewardBatch, int]]
                ) -> tuple[np.ndarray, np.ndarray]:
  """(r_chosen, r_rejected) float64 over `(batch, num_real_pairs)` items, padding rows dropped.

  Every batch is dispatched before any result is fetched, so the device never waits on the host.
  """
  outs = [(pair_scorer(params, batch), n) for batch, n in batches]
  r_Bx2 = np.concatenate([np.asarray(run_setup.to_host(o), np.float64)[:n] for o, n in outs])
  return r_Bx2[:, 0], r_Bx2[:, 1]


def eval_batches(records: Sequence[dict[str, Any]], *, global_batch_size: int,
                 buckets: Sequence[int], pad_id: int, mesh: jax.sharding.Mesh
                 ) -> list[tuple[reward_model.RewardBatch, int]]:
  """Device batches of `global_batch_size` pairs (`run_setup.padded_chunks`: the last one topped
  up with repeats of its last pair), each with its number of real pairs; every host holds its own
  rows."""
  out = []
  for chunk, real in run_setup.padded_chunks(records, global_batch_size):
    host = reward_model.collate_reward_batch(run_setup.host_rows(chunk), buckets=buckets,
                                             pad_id=pad_id)
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
  init_record = run_setup.resolve_policy_record(config.init.policy_artifact, registry_path)
  texts = lambda: [chat.render_text(e.prompt, r) for e in data.train  # noqa: E731
                   for r in (e.chosen, e.rejected)]
  tokenizer, tokenizer_path, model_cfg = run_setup.tokenizer_and_model_config(
      config, workdir, init_record, texts)
  splits = {name: tokenize_examples(getattr(data, name), tokenizer, config.data.max_len)
            for name in ("train", "validation", "calibration", "test")}
  for name, records in splits.items():
    if not records:
      raise ValueError(f"the {name} split of data source {config.data.source!r} is empty")
  logger.info("RM data %s: %s pairs", data.dataset_id, {k: len(v) for k, v in splits.items()})

  model = models.ScalarModel(model_cfg, mesh=mesh, rules=rules)
  init_fn = functools.partial(models.init_params, model)
  tx, schedule = optimizer_lib.make_optimizer(config.optimizer)
  score_fn = reward_model.make_score_fn(model)
  loss_fn = reward_model.make_loss_fn(score_fn, config.loss)
  step_kwargs = dict(batch_shardings=reward_model.batch_shardings(mesh), mesh=mesh,
                     num_micro_batches=derived.batch.num_micro_batches,
                     compute_dtype=optimizer_lib.compute_dtype_of(config.optimizer.compute_dtype),
                     schedule_fn=schedule)
  num_members = config.ensemble.size if config.ensemble.size > 1 else None
  if num_members is None:
    state, state_sh = train_state_lib.create_train_state(init_fn, tx, mesh, rules,
                                                     jax.random.key(config.seed))
    step_fn = reward_model.make_step(loss_fn, tx, state_shardings=state_sh, **step_kwargs)
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

  collate = functools.partial(reward_model.collate_reward_batch, buckets=derived.buckets,
                              pad_id=tokenizer.pad_id,
                              use_confidence=config.loss.use_confidence)
  loader = loader_lib.make_loader(splits["train"], batch_size=derived.batch.per_host_batch_size,
                                  seed=config.seed, batch_fn=collate)
  batches = {name: eval_batches(splits[name], global_batch_size=derived.batch.global_batch_size,
                                buckets=derived.buckets, pad_id=tokenizer.pad_id, mesh=mesh)
             for name in ("validation", "calibration", "test")}
  pair_scorer = reward_model.make_pair_scorer(eval_score_fn)

  def eval_fn(st, step):
    del step
    r_c, r_r = score_pairs(pair_scorer, st.params, batches["validation"])
    flat = reward_model_eval.flat_metrics(evaluate_records(splits["validation"], r_c, r_r,
                                                           num_bins=config.eval.num_bins))
    return {f"eval/{k}": v for k, v in flat.items() if math.isfinite(v)}

  manager = run_setup.checkpoint_manager_from_config(config.checkpoint, workdir, name=config.name)
  writer = metrics_lib.make_writers(workdir, log_every=config.train.log_every)
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
