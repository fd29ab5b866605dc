"""Tests of the simulated annotator panel: labelling model, biases, ties and output records."""
import math

import numpy as np
import pytest

from rlhf_jax.lab import annotators as ann
from rlhf_jax.lab import gold
from rlhf_jax.lab import sampler as sampler_lib


def _sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def _pairs(num, seed=0, scale=1.5):
  rng = np.random.default_rng(seed)
  gold_a, gold_b = rng.normal(0, scale, num), rng.normal(0, scale, num)
  words_a, words_b = rng.integers(10, 41, num), rng.integers(10, 41, num)
  return gold_a, gold_b, words_a, words_b


def test_probability_matches_reference_formula():
  gold_a, gold_b, words_a, words_b = _pairs(50)
  cases = [ann.SimulatedAnnotator("bt", temperature=0.7, length_bias=0.05, position_bias=0.3),
           ann.SimulatedAnnotator("adv", temperature=1.3, length_bias=-0.02, position_bias=0.4,
                                  kind="adversarial"),
           ann.SimulatedAnnotator("rnd", temperature=0.3, length_bias=0.5, kind="random")]
  for a in cases:
    p = ann.prob_a_preferred(a, gold_a, gold_b, words_a, words_b)
    assert p.dtype == np.float64 and p.shape == (50,)
    for i in range(50):
      sign = -1.0 if a.kind == "adversarial" else 1.0
      logit = (sign * (gold_a[i] - gold_b[i]) / a.temperature
               + a.length_bias * (words_a[i] - words_b[i]) + a.position_bias)
      expected = 0.5 if a.kind == "random" else _sigmoid(logit)
      assert p[i] == pytest.approx(expected, abs=1e-12)


def test_zero_temperature_is_noiseless_and_biases_only_break_exact_ties():
  a = ann.SimulatedAnnotator("t0", temperature=0.0, position_bias=2.0)
  p = ann.prob_a_preferred(a, np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 2.0]),
                           np.zeros(3), np.zeros(3))
  np.testing.assert_allclose(p, [1.0, 0.0, _sigmoid(2.0)], atol=1e-15)


@pytest.mark.parametrize("temperature", [0.25, 1.0, 4.0])
def test_agreement_with_gold_matches_bradley_terry_expectation(temperature):
  num = 20_000
  gold_a, gold_b, words_a, words_b = _pairs(num, seed=1)
  a = ann.SimulatedAnnotator("x", temperature=temperature)
  labels = ann.annotate([a], gold_a, gold_b, words_a, words_b, np.random.default_rng(2))
  agree = np.mean(labels.label_A == ann.gold_labels(gold_a, gold_b))
  p_agree = 1.0 / (1.0 + np.exp(-np.abs(gold_a - gold_b) / temperature))
  sd = math.sqrt(np.sum(p_agree * (1 - p_agree))) / num
  assert abs(agree - p_agree.mean()) < 4 * sd, (agree, p_agree.mean())


def test_random_clicker_and_adversary():
  num = 20_000
  gold_a, gold_b, words_a, words_b = _pairs(num, seed=3)
  truth = ann.gold_labels(gold_a, gold_b)
  panel = [ann.SimulatedAnnotator("rnd", kind="random", tie_threshold=10.0),
           ann.SimulatedAnnotator("adv", temperature=0.5, kind="adversarial"),
           ann.SimulatedAnnotator("bt", temperature=0.5)]
  rates = {}
  for a in panel:
    labels = ann.annotate([a], gold_a, gold_b, words_a, words_b, np.random.default_rng(4))
    rates[a.annotator_id] = np.mean(labels.label_A == truth)
    if a.kind == "random":
      assert not np.any(labels.label_A == ann.LABEL_TIE)  # a random clicker never says tie
  assert rates["rnd"] == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(num))
  assert rates["adv"] == pytest.approx(1.0 - rates["bt"], abs=0.02)
  assert rates["adv"] < 0.3 < 0.7 < rates["bt"]


def test_length_and_position_biases_behave_as_named():
  num = 20_000
  equal = np.zeros(num)
  longer_a, shorter_b = np.full(num, 30), np.full(num, 20)
  rng = np.random.default_rng(5)
  lover = ann.SimulatedAnnotator("len", temperature=1.0, length_bias=0.1)
  labels = ann.annotate([lover], equal, equal, longer_a, shorter_b, rng)
  rate = np.mean(labels.label_A == ann.LABEL_A)  # equal gold: the longer answer wins more
  assert rate == pytest.approx(_sigmoid(0.1 * 10), abs=4 * 0.5 / math.sqrt(num))
  labels = ann.annotate([lover], equal, equal, shorter_b, longer_a, rng)
  assert np.mean(labels.label_A == ann.LABEL_B) == pytest.approx(rate, abs=0.02)
  first = ann.SimulatedAnnotator("pos", temperature=1.0, position_bias=1.0)
  labels = ann.annotate([first], equal, equal, shorter_b, shorter_b, rng)
  assert np.mean(labels.label_A == ann.LABEL_A) == pytest.approx(
      _sigmoid(1.0), abs=4 * 0.5 / math.sqrt(num))


def test_ties_below_threshold_and_gold_labels():
  gold_a = np.array([0.0, 0.05, -0.05, 0.5, 1.0, 2.0])
  gold_b = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 2.5])
  a = ann.SimulatedAnnotator("t", temperature=0.01, tie_threshold=0.1)
  labels = ann.annotate([a], gold_a, gold_b, np.zeros(6), np.zeros(6), np.random.default_rng(0))
  np.testing.assert_array_equal(labels.label_A, [2, 2, 2, 0, 2, 1])
  np.testing.assert_array_equal(ann.gold_labels(gold_a, gold_b), [2, 0, 1, 0, 2, 1])
  gold_panel = ann.annotate([ann.GOLD_ANNOTATOR], gold_a, gold_b, np.zeros(6), np.zeros(6),
                            np.random.default_rng(9))
  np.testing.assert_array_equal(gold_panel.label_A, ann.gold_labels(gold_a, gold_b))


def test_panel_assignment_is_seeded_and_distinct_per_item():
  gold_a, gold_b, words_a, words_b = _pairs(200, seed=6)
  panel = ann.DEFAULT_PANEL
  run = lambda seed: ann.annotate(panel, gold_a, gold_b, words_a, words_b,
                                  np.random.default_rng(seed), annotators_per_item=3)
  x, y, z = run(0), run(0), run(1)
  for u, v in zip(x, y):
    np.testing.assert_array_equal(u, v)
  assert not np.array_equal(x.annotator_A, z.annotator_A)
  np.testing.assert_array_equal(x.item_A, np.repeat(np.arange(200), 3))
  who = x.annotator_A.reshape(200, 3)
  assert all(len(set(row)) == 3 for row in who.tolist())
  counts = np.bincount(x.annotator_A, minlength=len(panel))  # uniform over the panel
  assert counts.min() > 0.7 * 600 / len(panel)


def test_label_pairs_records_follow_the_schema():
  from rlhf_jax.data import schemas  # pylint: disable=g-import-not-at-top
  s = sampler_lib.ReviewSampler()
  rng = np.random.default_rng(0)
  prompts = ["Write a review of the kettle.", "How is the lens of the camera?"] * 10
  a = [s.sample(*gold.parse_prompt(p), rng).text for p in prompts]
  b = [s.sample(*gold.parse_prompt(p), rng).text for p in prompts]
  panel = (ann.SimulatedAnnotator("x", temperature=0.5, tie_threshold=0.3),
           ann.SimulatedAnnotator("y", temperature=2.0))
  out = ann.label_pairs(panel, prompts, a, b, np.random.default_rng(1), annotators_per_item=2)
  assert len(out.records) == 40
  assert len({r["id"] for r in out.records}) == 40
  np.testing.assert_allclose(out.gold_a_I, gold.gold_reward(prompts, a).total)
  for r, item, label in zip(out.records, out.labels.item_A, out.labels.label_A):
    ex = schemas.PreferenceExample.from_dict(r)
    assert ex.source == "lab/reviews" and ex.annotator_id in ("x", "y")
    assert ex.tie == (label == ann.LABEL_TIE)
    winner, loser = (a[item], b[item]) if label != ann.LABEL_B else (b[item], a[item])
    assert (ex.chosen, ex.rejected) == (winner, loser)
    golds = {a[item]: out.gold_a_I[item], b[item]: out.gold_b_I[item]}
    assert r["metadata"]["gold_chosen"] == golds[ex.chosen]
    assert r["metadata"]["gold_rejected"] == golds[ex.rejected]
    assert r["metadata"]["shown_first"] == ("chosen" if ex.chosen == a[item] else "rejected")
  rows = ann.comparison_records(prompts, a, b, out.labels, panel)
  comparisons = [schemas.Comparison.from_dict(r) for r in rows]
  assert [c.label for c in comparisons] == [ann.LABEL_NAMES[x] for x in out.labels.label_A]


def test_invalid_panels_are_refused():
  z = np.zeros(3)
  with pytest.raises(ValueError, match="kind must be one of"):
    ann.annotate([ann.SimulatedAnnotator("a", kind="lazy")], z, z, z, z, np.random.default_rng(0))
  with pytest.raises(ValueError, match="annotator 'a': temperature must be >= 0"):
    ann.SimulatedAnnotator("a", temperature=-1.0).validate()
  with pytest.raises(ValueError, match="unique"):
    ann.annotate([ann.SimulatedAnnotator("a")] * 2, z, z, z, z, np.random.default_rng(0))
  with pytest.raises(ValueError, match=r"annotators_per_item must lie in \[1, 1\]"):
    ann.annotate([ann.SimulatedAnnotator("a")], z, z, z, z, np.random.default_rng(0), 2)
  with pytest.raises(ValueError, match="share one shape"):
    ann.prob_a_preferred(ann.SimulatedAnnotator("a"), z, np.zeros(2), z, z)
