"""Tests of the lab corpora: determinism, held-out splits, schema layout, learnability hints."""
import dataclasses
import json

import numpy as np
import pytest

from rlhf_jax.lab import annotators as ann
from rlhf_jax.lab import arithmetic
from rlhf_jax.lab import corpora
from rlhf_jax.lab import gold
from rlhf_jax.lab import grammar

_KIND = {"sft": "sft", "prompts": "prompt", "preferences": "preference"}


@pytest.fixture(scope="module")
def small():
  return corpora.build_corpora(corpora.LabConfig.small(seed=3, num=24))


def test_every_corpus_is_built_with_its_size(small):
  expected = {f"{task}/{c}_{s}" for task, cs in (("reviews", ("sft", "prompts", "preferences")),
                                                 ("arithmetic", ("sft", "prompts")))
              for c in cs for s in corpora.SPLITS} | {"reviews/preferences_eval_gold"}
  assert set(small) == expected
  assert all(len(v) == 24 for v in small.values())


def test_records_follow_the_pipeline_schemas(small):
  from rlhf_jax.data import schemas  # pylint: disable=g-import-not-at-top
  for name, records in small.items():
    kind = _KIND[name.split("/")[1].split("_")[0]]
    examples = corpora.as_examples(records, kind)
    assert [e.to_dict() for e in examples] == records  # the records ARE the schema's dicts
    json.dumps(records)  # JSON-serialisable as written
    assert len({r["id"] for r in records}) == len(records)
  prefs = corpora.as_examples(small["reviews/preferences_train"], "preference")
  assert all(isinstance(p, schemas.PreferenceExample) and p.source == "lab/reviews"
             and p.annotator_id in {a.annotator_id for a in ann.DEFAULT_PANEL} for p in prefs)
  with pytest.raises(ValueError, match="kind must be one of"):
    corpora.as_examples([], "pairs")


def test_build_is_deterministic_per_seed():
  a = corpora.build_corpora(corpora.LabConfig.small(seed=0, num=8))
  b = corpora.build_corpora(corpora.LabConfig.small(seed=0, num=8))
  c = corpora.build_corpora(corpora.LabConfig.small(seed=1, num=8))
  assert a == b
  assert all(a[k] != c[k] for k in a)


def test_corpora_use_independent_prefix_stable_streams():
  base = corpora.LabConfig.small(seed=0, num=8)
  bigger = dataclasses.replace(base, num_sft_train=12, num_preferences_train=12)
  assert corpora.review_prompts(base, "train") == corpora.review_prompts(bigger, "train")
  assert corpora.review_sft(bigger, "train")[:8] == corpora.review_sft(base, "train")
  pairs_few, pairs_more = corpora.review_pairs(base, "train"), corpora.review_pairs(bigger, "train")
  assert all(more[:8] == few for more, few in zip(pairs_more, pairs_few))


def test_held_out_splits_are_prompt_disjoint():
  config = corpora.LabConfig.small(seed=2, num=300)
  for fn in (corpora.review_sft, corpora.review_prompts, corpora.arithmetic_sft,
             corpora.arithmetic_prompts):
    train = {r["prompt"] for r in fn(config, "train")}
    held_out = {r["prompt"] for r in fn(config, "eval")}
    assert train and held_out and not train & held_out, fn.__name__
  universe = corpora.review_prompt_universe()
  assert len(universe) == len({p for p, _, _ in universe}) == 280
  eval_share = np.mean([corpora.prompt_split(p, 2, 0.2) == "eval" for p, _, _ in universe])
  assert 0.12 < eval_share < 0.28
  with pytest.raises(ValueError, match="split must be one of"):
    corpora.review_sft(config, "test")


def test_review_corpora_come_from_the_base_language(small):
  for r in small["reviews/sft_train"] + small["reviews/sft_eval"]:
    assert grammar.is_grammatical(r["response"])
    assert 10 <= grammar.word_count(r["response"]) <= 40
    assert gold.parse_prompt(r["prompt"]) == (r["metadata"]["product"], r["metadata"]["aspect"])
  for r in small["arithmetic/sft_train"]:
    assert arithmetic.check_answer(r["prompt"], r["response"])
    assert r["metadata"]["level"] in (1, 2, 3)


def test_gold_preferences_label_the_same_pairs_without_noise(small):
  panel, gold_rows = small["reviews/preferences_eval"], small["reviews/preferences_eval_gold"]
  assert [{r["chosen"], r["rejected"]} for r in panel] == [
      {r["chosen"], r["rejected"]} for r in gold_rows]
  for r in gold_rows:
    assert r["annotator_id"] == "gold"
    assert r["metadata"]["gold_chosen"] >= r["metadata"]["gold_rejected"]
    assert r["tie"] == (r["metadata"]["gold_chosen"] == r["metadata"]["gold_rejected"])
    # The recorded gold rewards are the gold reward of the texts.
    g = gold.gold_reward([r["prompt"]] * 2, [r["chosen"], r["rejected"]]).total
    assert (g[0], g[1]) == (r["metadata"]["gold_chosen"], r["metadata"]["gold_rejected"])


def test_panel_agreement_tracks_annotator_reliability():
  config = dataclasses.replace(corpora.LabConfig.small(num=0), num_preferences_train=1500,
                               annotators_per_pair=len(ann.DEFAULT_PANEL))
  out = corpora.review_preferences(config, "train")
  truth = ann.gold_labels(out.gold_a_I, out.gold_b_I)[out.labels.item_A]
  agree = {a.annotator_id: np.mean(out.labels.label_A[out.labels.annotator_A == i]
                                   == truth[out.labels.annotator_A == i])
           for i, a in enumerate(ann.DEFAULT_PANEL)}
  assert agree["expert"] > agree["careful"] > agree["typical"] > agree["hasty"]
  assert agree["expert"] > 0.85 and abs(agree["random_clicker"] - 0.5) < 0.06
  assert len(out.records) == 1500 * len(ann.DEFAULT_PANEL)


def test_learnability_hint():
  hint = corpora.learnability(corpora.LabConfig(), num_samples=300)
  assert 200 <= hint["lexicon_words"] <= 400
  assert hint["distinct_surface_words"] >= 150
  assert 10 <= hint["mean_words"] <= 40 and hint["max_words"] <= 40
  assert 0.5 < hint["length_filter_acceptance"] <= 1.0
  assert 1.0 < hint["entropy_bits_per_word"] < 6.0  # learnable, but far from trivial
  assert hint["entropy_nats_per_review"] > 20.0
  assert -1.0 < hint["gold_mean"] < 2.0 and hint["gold_std"] > 0.5  # headroom for RL


def test_config_validation():
  with pytest.raises(ValueError, match="lab.num_sft_train must be >= 0"):
    corpora.LabConfig(num_sft_train=-1).validate()
  with pytest.raises(ValueError, match="lab.eval_prompt_fraction"):
    corpora.LabConfig(eval_prompt_fraction=1.0).validate()
  with pytest.raises(ValueError, match="lab.arithmetic_levels: 9"):
    corpora.LabConfig(arithmetic_levels=(1, 9)).validate()
  with pytest.raises(ValueError, match="lab.annotators_per_pair"):
    corpora.LabConfig(annotators_per_pair=99).validate()
