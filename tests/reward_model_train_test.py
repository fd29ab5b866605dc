"""Tests for the reward-model training run (rlhf_jax.algorithms.reward_model_train.train_reward_model)."""
import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from rlhf_jax import lab, models, sharding
from rlhf_jax.algorithms import ensemble, metrics as metrics_lib, optimizer
from rlhf_jax.algorithms import reward_model_train as rm, rm_scoring, train_state
from rlhf_jax.checkpointing import registry
from rlhf_jax.data import dedup
from rlhf_jax.data.tokenizer import Tokenizer

CONFIG_FILE = pathlib.Path(__file__).resolve().parent.parent / "configs" / "reward_model.py"


def _config(**overrides):
  from rlhf_jax.config import load_sibling  # pylint: disable=g-import-not-at-top
  config = load_sibling(str(CONFIG_FILE), "reward_model").get_config("test")
  for dotted, value in overrides.items():
    section = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      section = section[p]
    section[leaf] = value
  return config


def test_validate_and_derive_names_the_bad_field():
  derived = rm.validate_and_derive(_config(), num_devices=8, num_processes=1)
  assert derived.batch.per_device_micro_batch == 1 and derived.buckets == (96,)
  for dotted, value, match in [("data.aggregation", "vote", "data.aggregation"),
                               ("loss.label_smoothing", 0.7, "loss.label_smoothing"),
                               ("ensemble.size", 0, "ensemble.size"),
                               ("train.early_stopping_metric", "loss/total", "early_stopping_metric"),
                               ("batch.global_batch_size", 12, "divisible"),
                               ("eval.calibration", "beta", "eval.calibration")]:
    with pytest.raises(ValueError, match=match):
      rm.validate_and_derive(_config(**{dotted: value}), num_devices=8, num_processes=1)


def test_early_stopping_counts_evaluations_without_improvement():
  stopper = rm.EarlyStopping("max", patience=2, min_delta=0.01)
  assert [stopper.update(v) for v in (0.5, 0.6, 0.605, float("nan"), 0.7, 0.69, 0.7)] == [
      False, False, False, True, False, False, True]
  assert stopper.best == 0.7
  never = rm.EarlyStopping("min", patience=0)
  assert not any(never.update(v) for v in (1.0, 2.0, 3.0))


def test_lab_aggregation_keeps_one_oriented_pair_per_item_with_gold():
  config = _config(**{"data.annotators_per_pair": 3, "data.aggregation": "dawid_skene"})
  data = rm.lab_preference_data(config)
  items = [e.metadata["item"] for e in data.train]
  assert len(items) == len(set(items)) == config.lab.num_preferences_train
  e = data.train[0]
  gold = lab.gold_reward([e.prompt, e.prompt], [e.chosen, e.rejected]).total
  np.testing.assert_allclose([e.metadata["gold_chosen"], e.metadata["gold_rejected"]], gold)
  assert all(0.0 <= x.confidence <= 1.0 for x in data.train)
  assert sum(len(s) for s in (data.validation, data.calibration, data.test)) == \
      config.lab.num_preferences_eval
  assert 0.5 < data.info["label_gold_accuracy"] <= 1.0
  gold_labels = rm.lab_preference_data(_config(**{"data.labels": "gold"}))
  assert gold_labels.info["label_gold_accuracy"] == 1.0


def test_hh_rlhf_source_splits_by_prompt(shared_data_dir):
  path = shared_data_dir / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
  data = rm.hh_rlhf_preference_data(_config(**{"data.source": "hh_rlhf", "data.paths": str(path),
                                               "data.max_pairs": 300, "data.heldout_fraction": 0.3}))
  sizes = [len(s) for s in (data.train, data.validation, data.calibration, data.test)]
  assert sum(sizes) == 300
  assert 0.2 < sum(sizes[1:]) / 300 < 0.4  # heldout_fraction 0.3 of the prompts
  assert all(0.2 < n / sum(sizes[1:]) < 0.47 for n in sizes[1:])  # thirds of the held-out prompts
  for i, held in enumerate((data.validation, data.calibration, data.test)):
    dedup.check_prompt_disjoint(data.train, held)
    for other in (data.validation, data.calibration, data.test)[i + 1:]:
      dedup.check_prompt_disjoint(held, other)


@pytest.fixture(scope="module")
def sft_artifact(tmp_path_factory, testdata_dir):
  """A registered random CausalLM 'policy' artifact with the 512-piece test tokenizer."""
  root = tmp_path_factory.mktemp("sft")
  cfg = models.get_model_config("test", vocab_size=512)
  params = jax.jit(lambda k: nn.unbox(models.init_params(models.CausalLM(cfg), k)))(
      jax.random.key(42))
  registry.export_params(root / "export" / "sft_policy", params)
  record = {"artifact_id": "sft_policy@000000000000", "kind": "policy",
            "params_path": str(root / "export" / "sft_policy"), "model_config": cfg.to_dict(),
            "tokenizer_path": str(testdata_dir / "tokenizer_512.model")}
  registry.register(root / "artifacts", record)
  return {"registry": root / "artifacts", "record": record, "params": params, "config": cfg}


@pytest.mark.parametrize("num_members", [None, 2])
def test_trunk_is_loaded_from_the_policy_artifact(sft_artifact, num_members):
  cfg, mesh = sft_artifact["config"], sharding.single_device_mesh()
  model = models.ScalarModel(cfg, mesh, sharding.DEFAULT_RULES)
  init_fn = lambda k: models.init_params(model, k)  # noqa: E731
  tx, _ = optimizer.make_optimizer(optimizer.optimizer_config_defaults())
  if num_members is None:
    state, _ = train_state.create_train_state(init_fn, tx, mesh, sharding.DEFAULT_RULES,
                                              jax.random.key(0))
  else:
    state, _, _ = ensemble.create_ensemble_state(init_fn, tx, mesh, sharding.DEFAULT_RULES,
                                                 jax.random.split(jax.random.key(0), num_members))
  params = rm._load_trunk(sft_artifact["record"], state.params, cfg, mesh, sharding.DEFAULT_RULES,
                          num_members)
  for m in range(num_members or 1):
    got = params if num_members is None else ensemble.member(params, m)
    for a, b in zip(jax.tree.leaves(got["decoder"]), jax.tree.leaves(sft_artifact["params"]["decoder"])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(params["head"]["kernel"], state.params["head"]["kernel"])


@pytest.fixture(scope="module")
def ensemble_run(sft_artifact, tmp_path_factory):
  """A 2-member bootstrapped ensemble from the policy artifact; a constant early-stopping metric
  with patience 1 stops it after the second evaluation (step 4 of 6)."""
  workdir = tmp_path_factory.mktemp("rm") / "run"
  config = _config(**{
      "init.policy_artifact": sft_artifact["record"]["artifact_id"],
      "registry_dir": str(sft_artifact["registry"]), "ensemble.size": 2,
      "ensemble.bootstrap": True, "train.total_steps": 6, "optimizer.total_steps": 6,
      "train.early_stopping_metric": "eval/num_pairs", "train.early_stopping_patience": 1,
      "checkpoint.keep_best_metric": "eval/log_loss", "checkpoint.best_mode": "min",
      "checkpoint.max_to_keep": 1})
  summary = rm.train_reward_model(config, workdir)
  return config, workdir, summary


def test_run_stops_early_and_exports_the_best_checkpoint(ensemble_run, sft_artifact):
  config, workdir, summary = ensemble_run
  assert summary["final_step"] == 4 and summary["stop_reason"].startswith("early_stopping")
  evals = {r["step"]: r["eval/log_loss"] for r in metrics_lib.read_jsonl(workdir / "metrics.jsonl")
           if "eval/log_loss" in r}
  assert sorted(evals) == [2, 4]
  assert summary["best_step"] == min(evals, key=evals.get)
  report = json.loads((workdir / "eval_report.json").read_text())
  assert {"validation", "test", "calibration", "normalisation"} <= set(report)
  assert set(report["test"]["calibrated"]) == {"platt", "isotonic"}
  assert "gold" in report["test"] and "by_annotator" in report["test"]
  # Validation metrics of the exported state equal those logged at its step.
  assert report["validation"]["log_loss"] == pytest.approx(evals[summary["best_step"]], rel=1e-5)
  for name in ("reliability.png", "reliability_isotonic.png", "summary.json"):
    assert (workdir / name).exists()

  scorer = rm_scoring.load_scorer(summary["artifact_id"], sft_artifact["registry"])
  assert scorer.num_members == 2 and scorer.version == summary["artifact_id"]
  assert scorer.calibration is not None and scorer.normalisation is not None
  # The normalisation was fitted on the calibration split's responses: mean 0, std 1 there.
  data = rm.lab_preference_data(config)
  tok = Tokenizer.load(sft_artifact["record"]["tokenizer_path"])
  records = rm.tokenize_examples(data.calibration, tok, config.data.max_len)
  rows = list(dict.fromkeys(tuple(r["prompt_ids"] + r[k]) for r in records
                            for k in ("chosen_ids", "rejected_ids")))
  out = scorer.score_ids(rows)
  np.testing.assert_allclose([out["normalized"].mean(), out["normalized"].std()], [0.0, 1.0],
                             atol=1e-4)
  assert np.all(out["std"] > 0)  # bootstrapped members disagree


def test_rerun_resumes_from_the_last_checkpoint(ensemble_run):
  config, workdir, _ = ensemble_run
  config = config.copy_and_resolve_references()
  config.train.early_stopping_patience = 0
  summary = rm.train_reward_model(config, workdir)
  assert summary["final_step"] == 6 and summary["stop_reason"] == "total_steps"
  steps = [r["step"] for r in metrics_lib.read_jsonl(workdir / "metrics.jsonl")
           if "loss/total" in r]
  assert steps == [1, 2, 3, 4, 5, 6]  # steps 1-4 were not re-run
