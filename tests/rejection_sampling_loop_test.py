"""The iterated rejection-sampling loop on a tiny policy: the policy chain, what each round's SFT
is given, the datasets' provenance, resumption, and config errors.

`train_sft(config, workdir, records=...)` is being added to the SFT trainer by another engineer;
until it exists the test wraps the trainer so that `records` replace the lab corpus (the same
contract), and records every call.
"""
import gzip
import json

import numpy as np
import pytest

from rlhf_jax.algorithms import rejection_sampling_loop as loop
from rlhf_jax.algorithms import sft
from rlhf_jax.checkpointing import registry
from configs import rejection_sampling as rs_config
from tiny_policy import train_tiny_policy


class SpySFT:
  """Calls the real trainer (with `records` as its data) and keeps every call's arguments."""

  def __init__(self, real):
    self.real, self.calls = real, []

  def __call__(self, config, workdir, records=None):
    self.calls.append({"config": config, "workdir": workdir, "records": records})
    return self.real(config, workdir, records=records)


def _config(registry_dir, artifact_id):
  config = rs_config.get_config("test")
  config.registry_dir = str(registry_dir)
  config.policy = artifact_id
  config.selection.require_eos = False  # a tiny policy rarely stops within 8 tokens
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  registry_dir, artifact_id = train_tiny_policy(tmp_path_factory, "a")
  spy = SpySFT(sft.train_sft)
  mp = pytest.MonkeyPatch()
  mp.setattr(sft, "train_sft", spy)
  workdir = tmp_path_factory.mktemp("rs")
  try:
    summary = loop.run_rejection_sampling(_config(registry_dir, artifact_id), workdir)
  finally:
    mp.undo()
  return summary, spy, workdir, registry_dir, artifact_id


def test_policies_form_a_chain_of_registered_artifacts(run):
  summary, _, workdir, registry_dir, artifact_id = run
  assert json.loads((workdir / "rounds.json").read_text()) == summary
  rounds = summary["rounds"]
  assert [r["round"] for r in rounds] == [0, 1, 2]
  assert rounds[0]["policy"] == summary["initial_policy"] == artifact_id
  for before, after in zip(rounds, rounds[1:]):
    assert after["policy"] == before["new_policy"] != before["policy"]
    assert registry.resolve(registry_dir, before["new_policy"])["kind"] == "policy"
  assert summary["final_policy"] == rounds[-1]["policy"] and "new_policy" not in rounds[-1]
  assert (workdir / "rounds.png").read_bytes()[:4] == b"\x89PNG"


def test_each_round_fine_tunes_the_current_policy_on_its_best_samples(run):
  summary, spy, workdir, registry_dir, _ = run
  assert len(spy.calls) == 2
  for k, call in enumerate(spy.calls):
    entry, cfg, records = summary["rounds"][k], spy.calls[k]["config"], spy.calls[k]["records"]
    record = registry.resolve(registry_dir, entry["policy"])
    assert cfg.init.params_artifact == entry["policy"] and cfg.registry_dir == str(registry_dir)
    assert cfg.tokenizer.path == record["tokenizer_path"]
    assert {k_: cfg.model[k_] for k_ in record["model_config"]} == record["model_config"]
    assert str(call["workdir"]) == str(workdir / f"round_{k}" / "sft")
    # The kept training samples are each prompt's proxy-best sample, and they are what SFT gets.
    samples = [json.loads(l) for l in (workdir / f"round_{k}" / "train_samples.jsonl").read_text().splitlines()]
    best = {s["prompt_id"]: s["responses"][int(np.argmax(s["proxy"]))] for s in samples}
    assert {r["metadata"]["prompt_id"]: r["response"] for r in records["train"]} == best
    assert all(r["metadata"]["policy_id"] == entry["policy"] for r in records["train"] + records["eval"])
    assert len(records["eval"]) == entry["num_eval_examples"] == 4
    # The same samples are on disk, with a manifest saying how they were made.
    with gzip.open(workdir / f"round_{k}" / "dataset" / "train.jsonl.gz", "rt") as f:
      assert [json.loads(l)["id"] for l in f] == [r["id"] for r in records["train"]]
    provenance = json.loads((workdir / f"round_{k}" / "dataset" / "manifest.json").read_text())["params"]["provenance"]
    assert provenance["round"] == k and provenance["policy"] == entry["policy"]
    assert provenance["reward_source"] == "gold" and provenance["prompts"]["split"] == "train"


def test_rerun_skips_finished_rounds(run, monkeypatch):
  summary, _, workdir, registry_dir, artifact_id = run
  def fail(config, workdir, records=None):
    raise AssertionError("a finished round was trained again")
  monkeypatch.setattr(sft, "train_sft", fail)
  again = loop.run_rejection_sampling(_config(registry_dir, artifact_id), workdir)
  assert again["final_policy"] == summary["final_policy"]
  assert again["rounds"][:2] == summary["rounds"][:2]


@pytest.mark.parametrize("field,value,match", [
    ("rounds", 0, "rounds"),
    ("prompts.split", "eval", "prompts.split must be 'train'"),
    ("eval_prompts.task", "arithmetic", "eval_prompts.task"),
    ("eval_prompts.lab_seed", 3, "eval_prompts.lab_seed"),
    ("best_of_n.num_samples", 0, "best_of_n.num_samples"),
    ("selection.mode", "threshold", "selection.threshold"),
    ("selection.mode", "top", "selection.mode"),
    ("reward.source", "verifier", "cannot score"),
    ("batch.global_batch_size", 7, "batch_size"),
])
def test_validate_and_derive_names_the_field(field, value, match):
  config = rs_config.get_config("test")
  *section, name = field.split(".")
  (config[section[0]] if section else config)[name] = value
  with pytest.raises(ValueError, match=match):
    loop.validate_and_derive(config, num_devices=8)
