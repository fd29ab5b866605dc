"""Tests for rlhf_jax.notebooks.rm_calibration: orientation, item split, calibration study."""
import numpy as np
import pytest

from rlhf_jax.lab import annotators as lab_annotators
from rlhf_jax.notebooks import rm_calibration
from testdata import numpy_references


def _labels(item, who, label):
  item = np.asarray(item)
  return lab_annotators.PanelLabels(item, np.asarray(who), np.asarray(label), np.full(item.shape, 0.5))


def test_orient_annotations():
  labels = _labels([0, 0, 1, 1], [0, 1, 0, 1], [1, 0, 2, 0])  # b, a, tie, a
  pairs = rm_calibration.orient_annotations([1.0, 5.0], [3.0, 4.0], labels, [10.0, 50.0], [30.0, 40.0])
  np.testing.assert_array_equal(pairs.r_chosen_A, [3.0, 1.0, 5.0, 5.0])
  np.testing.assert_array_equal(pairs.r_rejected_A, [1.0, 3.0, 4.0, 4.0])
  np.testing.assert_array_equal(pairs.gold_chosen_A, [30.0, 10.0, 50.0, 50.0])
  np.testing.assert_array_equal(pairs.gold_rejected_A, [10.0, 30.0, 40.0, 40.0])
  np.testing.assert_array_equal(pairs.tie_A, [False, False, True, False])
  np.testing.assert_array_equal(pairs.annotator_A, [0, 1, 0, 1])
  with pytest.raises(ValueError, match="refers to pair 1, but there are 1 pairs"):
    rm_calibration.orient_annotations([1.0], [2.0], labels, [0.0], [0.0])
  with pytest.raises(ValueError, match="score_b_I"):
    rm_calibration.orient_annotations([1.0, 2.0], [2.0], labels, [0.0, 0.0], [0.0, 0.0])


def test_split_items():
  cal = rm_calibration.split_items(10, 0.3, seed=1)
  assert cal.dtype == bool and cal.sum() == 3
  np.testing.assert_array_equal(cal, rm_calibration.split_items(10, 0.3, seed=1))
  assert not np.array_equal(cal, rm_calibration.split_items(10, 0.3, seed=2))
  with pytest.raises(ValueError, match="calibration_fraction"):
    rm_calibration.split_items(10, 1.0)
  with pytest.raises(ValueError, match="leave one part empty"):
    rm_calibration.split_items(2, 0.1)


def test_calibration_study_recovers_an_underconfident_model():
  # The RM's margin is half the true logit: sigmoid(margin) is under-confident, Platt finds a ~ 2.
  rng = np.random.default_rng(0)
  num_items = 3000
  score_a, score_b = rng.normal(0, 1.5, num_items), rng.normal(0, 1.5, num_items)
  p_a = 1.0 / (1.0 + np.exp(-2.0 * (score_a - score_b)))
  label = np.where(rng.random(num_items) < p_a, 0, 1)
  label[:30] = 2  # a few ties
  pairs = rm_calibration.orient_annotations(score_a, score_b, _labels(np.arange(num_items), np.arange(num_items) % 3,
                                                                      label), score_a, score_b)
  study = rm_calibration.calibration_study(pairs, ["x", "y", "z"], calibration_fraction=0.5, seed=0)
  assert study.num_calibration_rows + study.num_test_rows == num_items
  assert study.calibrations["platt"].a == pytest.approx(2.0, abs=0.25)
  # Raw ECE as an independent NumPy computation on the symmetrised non-tie test rows.
  test_items = ~rm_calibration.split_items(num_items, 0.5, seed=0)
  decided = test_items & (label != 2)
  margin = pairs.r_chosen_A[decided] - pairs.r_rejected_A[decided]
  np.testing.assert_allclose(np.sort(study.test_margin_B), np.sort(margin))
  x, y = np.concatenate([margin, -margin]), np.concatenate([np.ones(margin.size), np.zeros(margin.size)])
  assert study.report["ece"] == pytest.approx(numpy_references.ece(1.0 / (1.0 + np.exp(-x)), y), abs=1e-12)
  ece = {r["probabilities"]: r["ece"] for r in study.ece_rows()}
  assert set(ece) == {"raw sigmoid(margin)", "platt", "isotonic"}
  assert ece["platt"] < 0.5 * ece["raw sigmoid(margin)"] and ece["isotonic"] < ece["raw sigmoid(margin)"]
  # Gold = the scores themselves: the RM is always right about gold.
  assert study.report["gold"]["accuracy"] == 1.0
  rows = study.annotator_rows()
  assert [r["annotator"] for r in rows] == ["x", "y", "z"]
  assert sum(r["pairs"] for r in rows) == study.num_test_rows
  assert sum(r["ties"] for r in rows) == int((test_items & (label == 2)).sum())
  metrics = rm_calibration.metric_rows(study.report, ["auc", "gold/accuracy"])
  assert metrics == [{"metric": "auc", "value": study.report["auc"]}, {"metric": "gold/accuracy", "value": 1.0}]


def test_annotations_of_one_pair_stay_on_one_side():
  num_items = 40
  item = np.repeat(np.arange(num_items), 3)
  labels = _labels(item, np.tile(np.arange(3), num_items), np.zeros(item.size, int))
  scores = np.linspace(-1, 1, num_items)
  pairs = rm_calibration.orient_annotations(scores, -scores, labels, scores, -scores)
  study = rm_calibration.calibration_study(pairs, ["a", "b", "c"], calibration_fraction=0.25, seed=3)
  assert study.num_calibration_rows == 3 * 10 and study.num_test_rows == 3 * 30
  assert {r["pairs"] for r in study.annotator_rows()} == {30}
