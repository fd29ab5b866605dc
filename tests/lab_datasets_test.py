"""Tests of rlhf_jax.lab.datasets: lab corpora through prepare -> manifest -> TFDS -> loaders."""
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rlhf_jax.data import manifest, multi_annotator, pipeline, records
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.lab import annotators as ann
from rlhf_jax.lab import corpora
from rlhf_jax.lab import datasets
from rlhf_jax.lab import gold

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = corpora.LabConfig.small(seed=5, num=8)
# Two reliable annotators and three random clickers: a majority of three is often noise.
NOISY_PANEL = (ann.SimulatedAnnotator("expert", temperature=0.1),
               ann.SimulatedAnnotator("careful", temperature=0.5),
               *(ann.SimulatedAnnotator(f"random_{k}", kind="random") for k in (1, 2, 3)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = tmp_path_factory.mktemp("lab")
  return out, datasets.prepare_lab_datasets(CONFIG, out)


@pytest.fixture(scope="module")
def tok(testdata_dir):
  return Tokenizer.load(testdata_dir / "tokenizer_512.model")


def _ids(paths):
  return {c: manifest.load_manifest(p)["dataset_id"] for c, p in paths.items()}


def _read(manifest_path, split):
  m = manifest.verify_manifest(manifest_path)
  (entry,) = m["splits"][split]["files"]
  return records.read_jsonl_dicts(manifest_path.parent / entry["path"])


def test_every_corpus_passes_the_pipeline_with_a_verified_manifest(built, tok, tmp_path):
  out, paths = built
  assert set(paths) == set(datasets.CORPORA)
  for corpus, path in paths.items():
    m = manifest.verify_manifest(path)
    spec = datasets.CORPORA[corpus]
    assert m["dataset_id"].startswith("lab_") and m["params"]["reader"] == spec.reader
    assert m["params"]["lab"]["lab_config"] == json.loads(json.dumps(dataclasses.asdict(CONFIG)))
    expected = 16 if corpus == "mixed/sft" else 8  # 8 records per split and part
    assert {s: e["count"] for s, e in m["splits"].items()} == {"train": expected,
                                                              "eval": expected}
    assert m["filters"]["records_read"] == m["filters"]["kept"] + sum(
        m["filters"]["dropped"].values())
    for split, split_id in m["params"]["split_dataset_ids"].items():  # prepare's own manifests
      split_manifest = manifest.verify_manifest(path.parent / split / "manifest.json")
      assert split_manifest["dataset_id"] == split_id
    # Tokenised into TFDS array_record with its own verified manifest, like any prepared dataset.
    tfds_dir, tm = pipeline.build_tfds_from_prepared(path, tok, tmp_path / "tfds")
    sources, _ = pipeline.open_tfds_dataset(tfds_dir)
    assert tm["params"]["parent_dataset_id"] == m["dataset_id"]
    assert tm["params"]["kind"] == spec.kind
    assert {s: len(src) for s, src in sources.items()} == {s: e["count"]
                                                          for s, e in m["splits"].items()}


def test_loaders_read_batches_of_every_kind(built, tok, tmp_path):
  sft = next(iter(datasets.lab_sft_loader(CONFIG, tmp_path, tok, batch_size=4, seed=0,
                                           split="eval")))
  assert sft.tokens_BxL.shape[0] == 4 and np.all(sft.loss_mask_BxL.sum(axis=1) > 0)
  prefs = next(iter(datasets.lab_preference_loader(
      CONFIG, tmp_path, tok, corpus="reviews/preferences_dawid_skene", batch_size=4, seed=0)))
  assert prefs.rows.tokens_BxL.shape[0] == 8
  assert np.all((prefs.confidence_B > 0.0) & (prefs.confidence_B <= 1.0))
  prompts = next(iter(datasets.lab_prompt_loader(CONFIG, tmp_path, tok, batch_size=4, seed=0)))
  assert prompts.tokens_BxP.shape[0] == 4
  # The wrappers prepared into <data_dir>/lab with the same ids as a direct build.
  assert {p.parent.name for p in (tmp_path / "lab").glob("*/manifest.json")} == {
      built[1][c].parent.name for c in ("mixed/sft", "reviews/preferences_dawid_skene",
                                        "reviews/prompts")}
  with pytest.raises(ValueError, match="holds 'prompt' records"):
    datasets.lab_sft_loader(CONFIG, tmp_path, tok, corpus="reviews/prompts", batch_size=4, seed=0)


def test_ids_are_stable_across_builds_and_processes(built, tmp_path):
  out, paths = built
  again = datasets.prepare_lab_datasets(CONFIG, tmp_path / "again")
  assert _ids(again) == _ids(paths)
  for corpus in paths:  # byte-identical outputs
    for split in ("train", "eval"):
      a = paths[corpus].parent / split / "train.jsonl.gz"
      assert a.read_bytes() == (again[corpus].parent / split / "train.jsonl.gz").read_bytes()
  code = ("import json, sys; from rlhf_jax.lab import corpora, datasets; "
          "from rlhf_jax.data import manifest; "
          "p = datasets.prepare_lab_datasets(corpora.LabConfig.small(seed=5, num=8), sys.argv[1]); "
          "print(json.dumps({c: manifest.load_manifest(v)['dataset_id'] for c, v in p.items()}))")
  env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
  result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "other")], env=env,
                          capture_output=True, text=True, check=True, cwd=tmp_path)
  assert json.loads(result.stdout.strip().splitlines()[-1]) == _ids(paths)


def test_reuse_rebuild_and_new_ids(built, tmp_path, monkeypatch):
  out, paths = built
  before = _ids(paths)

  def no_generation(*args):
    raise AssertionError("a cached target was regenerated")

  with monkeypatch.context() as m:
    m.setattr(datasets.LabRecords, "part", no_generation)
    assert datasets.prepare_lab_datasets(CONFIG, out) == paths  # every target reused
  # A damaged target does not verify, so it is rebuilt (to the same id).
  damaged = paths["reviews/sft"].parent / "eval" / "train.jsonl.gz"
  damaged.write_bytes(damaged.read_bytes()[:-5])
  assert _ids(datasets.prepare_lab_datasets(CONFIG, out, corpora=["reviews/sft"])) == {
      "reviews/sft": before["reviews/sft"]}
  manifest.verify_manifest(paths["reviews/sft"])
  # Any change of the LabConfig gives new targets and new ids, for every corpus.
  for changed in (dataclasses.replace(CONFIG, seed=6),
                  dataclasses.replace(CONFIG, gold=dataclasses.replace(CONFIG.gold,
                                                                       w_length=2.0))):
    new = datasets.prepare_lab_datasets(changed, out)
    assert all(new[c] != paths[c] for c in paths)
    assert all(i != before[c] for c, i in _ids(new).items())
  # A verified target made from another LabConfig is not reused, even under this one's name.
  other = dataclasses.replace(CONFIG, seed=7)
  target = datasets.target_dir(tmp_path, datasets.build_options(other, "reviews/prompts"))
  shutil.copytree(paths["reviews/prompts"].parent, target)
  manifest.verify_manifest(target / "manifest.json")
  rebuilt = datasets.prepare_lab_datasets(other, tmp_path, corpora=["reviews/prompts"])
  assert rebuilt["reviews/prompts"] == target / "manifest.json"
  assert manifest.verify_manifest(target / "manifest.json")["params"]["lab"]["lab_config"][
      "seed"] == 7
  # Editing the lab's code moves every target (a stale corpus is never reused).
  monkeypatch.setattr(datasets, "_code_fingerprint", lambda: "edited")
  assert datasets.target_dir(out, datasets.build_options(CONFIG, "reviews/sft")) != paths[
      "reviews/sft"].parent


def _round_gold(record):
  meta = {**record["metadata"]}
  for key in ("gold_chosen", "gold_rejected"):
    assert round(meta[key], 9) == pytest.approx(meta[key], abs=5e-10)
    meta[key] = round(meta[key], 9)
  return {**record, "metadata": meta}


def test_records_read_back_equal_the_labs(built):
  _, paths = built
  for split in corpora.SPLITS:
    pairs = corpora.review_pairs(CONFIG, split)
    panel = corpora.review_preferences(CONFIG, split, pairs=pairs)
    expected = {
        "reviews/sft": corpora.review_sft(CONFIG, split),
        "reviews/prompts": corpora.review_prompts(CONFIG, split),
        "reviews/preferences": [_round_gold(r) for r in panel.records],
        "reviews/preferences_gold": [_round_gold(r) for r in corpora.review_preferences(
            CONFIG, split, gold_labels=True, pairs=pairs).records],
        "arithmetic/sft": corpora.arithmetic_sft(CONFIG, split),
        "arithmetic/prompts": corpora.arithmetic_prompts(CONFIG, split),
        "mixed/sft": corpora.review_sft(CONFIG, split) + corpora.arithmetic_sft(CONFIG, split),
    }
    for corpus, want in expected.items():
      assert _read(paths[corpus], split) == want, (corpus, split)
    # Aggregated: one record per pair, as aggregate_comparisons makes it from the panel's rows.
    comparisons = corpora.as_examples(ann.comparison_records(
        *pairs, panel.labels, CONFIG.panel, id_prefix=f"lab-reviews-{split}"), "comparison")
    for method in ("majority", "dawid_skene"):
      want = [dataclasses.replace(e, source="lab/reviews").to_dict()
              for e in multi_annotator.aggregate_comparisons(comparisons, method=method)]
      assert _read(paths[f"reviews/preferences_{method}"], split) == want
    # With one annotator per pair, the majority winner is that annotator's label.
    got = _read(paths["reviews/preferences_majority"], split)
    prompts, a, _ = pairs
    assert [r["chosen"] == a[i] for i, r in enumerate(got)] == [
        lab != ann.LABEL_B for lab in panel.labels.label_A.tolist()]


def test_validation_and_dedup_apply_as_to_real_data(tmp_path):
  config = dataclasses.replace(CONFIG, num_arithmetic_prompts_train=200,
                               arithmetic_levels=(1,))
  path = datasets.prepare_lab_datasets(config, tmp_path, corpora=["arithmetic/prompts"],
                                       dedup_mode="normalized")["arithmetic/prompts"]
  m = manifest.verify_manifest(path)
  distinct = {r["prompt"] for r in corpora.arithmetic_prompts(config, "train")}
  assert m["splits"]["train"]["count"] == len(distinct) < 200
  assert m["params"]["dedup_mode"] == "normalized"
  assert m["filters"]["dropped"]["duplicate_prompt_normalized"] >= 200 - len(distinct)
  assert [r["prompt"] for r in _read(path, "train")] == list(dict.fromkeys(
      r["prompt"] for r in corpora.arithmetic_prompts(config, "train")))


def _gold_accuracy(rows):
  prompts = [r["prompt"] for r in rows]
  g_chosen = gold.gold_reward(prompts, [r["chosen"] for r in rows]).total
  g_rejected = gold.gold_reward(prompts, [r["rejected"] for r in rows]).total
  scored = g_chosen != g_rejected
  tie = np.array([r["tie"] for r in rows])
  return float(np.mean(((g_chosen > g_rejected) & ~tie)[scored]))


def test_dawid_skene_agrees_with_gold_more_than_majority_on_a_noisy_panel(tmp_path):
  config = dataclasses.replace(corpora.LabConfig.small(seed=0, num=0), panel=NOISY_PANEL,
                               num_preferences_train=300, annotators_per_pair=3)
  paths = datasets.prepare_lab_datasets(
      config, tmp_path, corpora=["reviews/preferences_majority", "reviews/preferences_dawid_skene"])
  majority = _read(paths["reviews/preferences_majority"], "train")
  ds = _read(paths["reviews/preferences_dawid_skene"], "train")
  assert len(majority) == len(ds) == 300  # eval has size 0: left out of the manifests
  assert set(manifest.load_manifest(paths["reviews/preferences_majority"])["splits"]) == {"train"}
  acc_majority, acc_ds = _gold_accuracy(majority), _gold_accuracy(ds)
  # Seeded; measured 0.74 vs 0.88 at 2,000 pairs (scripts/lab_annotator_recovery.py --panel noisy).
  assert acc_ds > acc_majority + 0.05, (acc_ds, acc_majority)
  assert acc_ds > 0.8
  assert all(r["metadata"]["votes"]["a"] + r["metadata"]["votes"]["b"] == 3 for r in majority)


def test_bad_input_is_named(tmp_path):
  with pytest.raises(ValueError, match="unknown lab corpus 'reviews/sfts'"):
    datasets.prepare_lab_datasets(CONFIG, tmp_path, corpora=["reviews/sfts"])
  with pytest.raises(TypeError, match="write corpora=\\['reviews/sft'\\]"):
    datasets.prepare_lab_datasets(CONFIG, tmp_path, corpora="reviews/sft")
  with pytest.raises(ValueError, match="lab.num_sft_train must be >= 0"):
    datasets.prepare_lab_datasets(dataclasses.replace(CONFIG, num_sft_train=-1), tmp_path)
  empty = dataclasses.replace(CONFIG, num_prompts_train=0, num_prompts_eval=0)
  with pytest.raises(ValueError, match="'reviews/prompts': every split has size 0"):
    datasets.prepare_lab_datasets(empty, tmp_path, corpora=["reviews/prompts"])
