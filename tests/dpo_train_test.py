"""train_dpo end to end on the lab preferences (test variant): runs, resumes, evaluates, exports;
precomputed and in-step reference give the same run; starting from an SFT artifact."""
import json

import jax
import numpy as np
import pytest

from configs import dpo as dpo_config
from configs import sft as sft_config
from rlhf_jax.algorithms import dpo_train, reference_logprobs, sft
from rlhf_jax.checkpointing import registry
from rlhf_jax.algorithms import metrics as metrics_lib


@pytest.fixture(scope="module")
def in_step_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("dpo")
  config = dpo_config.get_config("test")
  return root, config, dpo_train.train_dpo(config, root / "in_step")


def _params(root, summary):
  record = registry.resolve(root / "artifacts", summary["artifact_id"])
  return record, jax.device_get(registry.load_params(record["params_path"]))


def test_run_logs_evaluates_exports_and_resumes(in_step_run):
  root, config, summary = in_step_run
  assert summary["reference_mode"] == "in_step" and summary["loss_hparams"] == {"beta": 0.1}
  assert summary["reference_id"].startswith("random_init-")
  rows = metrics_lib.read_jsonl(root / "in_step" / "metrics.jsonl")
  train_rows = [r for r in rows if "loss/total" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  assert train_rows[0]["loss/total"] == pytest.approx(np.log(2.0), abs=1e-6)  # policy == reference
  assert train_rows[0]["rewards/margin"] == 0.0 and train_rows[-1]["rewards/margin"] != 0.0
  evaluated = [r for r in rows if "eval/gold/total" in r]
  assert [r["step"] for r in evaluated] == [2, 4]
  for key in ("eval/kl/k1", "eval/kl/k3", "eval/kl/full", "eval/pref/rewards/accuracy",
              "eval/pref/loss/preference", "eval/gold/sentiment", "eval/sample/length"):
    assert key in evaluated[-1], key
  initial, final = summary["initial"], summary["final"]
  assert initial["eval/kl/full"] == pytest.approx(0.0, abs=1e-6)  # starts at the reference
  assert initial["eval/pref/loss/preference"] == pytest.approx(np.log(2.0), abs=1e-6)
  assert final["eval/kl/full"] > 0.0 and final["eval/pref/loss/preference"] < np.log(2.0)
  assert len(summary["examples"]) == config.eval.num_prompts
  record, _ = _params(root, summary)
  assert record["kind"] == "policy" and record["reference_id"] == summary["reference_id"]
  assert record["dataset_ids"] == [summary["dataset_id"]] and record["step"] == 4
  assert json.loads((root / "in_step" / "summary.json").read_text())["artifact_id"] == \
      summary["artifact_id"]
  again = dpo_train.train_dpo(config, root / "in_step")  # resumes at the end: nothing retrained
  assert again["artifact_id"] == summary["artifact_id"]
  assert [r["step"] for r in metrics_lib.read_jsonl(root / "in_step" / "metrics.jsonl")
          if "loss/total" in r] == [1, 2, 3, 4]


def test_precomputed_reference_gives_the_same_training_run(in_step_run):
  root, config, in_step = in_step_run
  config = dpo_config.get_config("test")
  config.reference.mode = "precomputed"
  config.eval.num_prompts = 0  # the sampling evaluation is covered by the in-step run
  summary = dpo_train.train_dpo(config, root / "precomputed")
  assert summary["dataset_id"] == in_step["dataset_id"]
  assert summary["reference_id"] == in_step["reference_id"]
  folder = summary["reference_logprobs_dir"]
  manifest = reference_logprobs.read_manifest(folder)
  assert manifest["dataset_id"] == summary["dataset_id"]
  assert manifest["reference_id"] == summary["reference_id"]
  assert manifest["num_examples"] == summary["train_pairs"] + summary["eval_pairs"]
  assert summary["last_loss"] == pytest.approx(in_step["last_loss"], rel=1e-6)
  _, got = _params(root, summary)
  _, want = _params(root, in_step)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, want)
  for key in ("eval/pref/loss/preference", "eval/pref/rewards/margin"):
    assert summary["final"][key] == pytest.approx(in_step["final"][key], rel=1e-5)


def test_dpo_from_an_sft_artifact_starts_at_the_reference(tmp_path):
  sft_cfg = sft_config.get_config("test")
  sft_cfg.train.total_steps = sft_cfg.optimizer.total_steps = 2
  sft_cfg.eval.num_sample_prompts = 0
  sft_summary = sft.train_sft(sft_cfg, tmp_path / "sft")
  config = dpo_config.get_config("test")
  config.init.policy_artifact = sft_summary["artifact_id"]
  config.init.allow_random_init = False
  config.train.total_steps = config.optimizer.total_steps = 2
  config.eval.num_prompts = 2
  config.eval.prompt_batch_size = 2
  summary = dpo_train.train_dpo(config, tmp_path / "dpo")
  assert summary["reference_id"] == sft_summary["artifact_id"]
  assert summary["initial"]["eval/kl/full"] == pytest.approx(0.0, abs=1e-6)
  assert summary["initial"]["eval/pref/loss/preference"] == pytest.approx(np.log(2.0), abs=1e-6)
  sft_record = registry.resolve(tmp_path / "artifacts", sft_summary["artifact_id"])
  dpo_record = registry.resolve(tmp_path / "artifacts", summary["artifact_id"])
  assert dpo_record["tokenizer_id"] == sft_record["tokenizer_id"]
  assert dpo_record["model_config"] == sft_record["model_config"]


@pytest.mark.parametrize("field,value,match", [
    ("batch.micro_batch_size", 3, r"global_batch_size \(8\) must be divisible by micro_batch_size"),
    ("algo.loss", "dop", "algo.loss must be one of"),
    ("algo.beta", -0.1, r"algo \(dpo\).*beta"),
    ("reference.mode", "lazy", "reference.mode"),
    ("data.labels", "crowd", "data.labels"),
    ("data.max_len", 100_000, "data.max_len"),
    ("init.allow_random_init", False, "init.policy_artifact is empty"),
])
def test_validate_and_derive_names_the_field(field, value, match):
  config = dpo_config.get_config("test")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    dpo_train.validate_and_derive(config, num_devices=8)


def test_default_config_validates_with_an_sft_artifact():
  config = dpo_config.get_config()
  with pytest.raises(ValueError, match="init.policy_artifact is empty"):
    dpo_train.validate_and_derive(config, num_devices=1)
  config.init.policy_artifact = "sft_policy@000000000000"
  derived = dpo_train.validate_and_derive(config, num_devices=1)
  assert derived.buckets == (32, 64, 96, 128) and derived.loss_hparams == {"beta": 0.1}
  config.algo.loss = "simpo"
  assert dpo_train.validate_and_derive(config, num_devices=1).loss_hparams == {
      "beta": 0.1, "gamma": 0.5}
