"""Tests for rlhf_jax.notebooks.panel against independent float64 NumPy computations."""
import numpy as np
import pytest

from rlhf_jax.data import annotators as agreement
from rlhf_jax.lab import annotators as lab_annotators
from rlhf_jax.notebooks import panel

IDS = ("good", "fair", "adversary")


def _panel(num_items=400, seed=0):
  """Three annotators judge every pair: 90% right, 70% right, 90% wrong (an adversary)."""
  rng = np.random.default_rng(seed)
  gold_a = rng.normal(size=num_items)
  gold_b = rng.normal(size=num_items)
  gold_b[:5] = gold_a[:5]  # gold ties: no right answer
  gold = np.where(gold_a > gold_b, 0, np.where(gold_a < gold_b, 1, 2))
  decided = np.where(gold == 2, 0, gold)
  good = np.where(rng.random(num_items) < 0.9, decided, 1 - decided)
  fair = np.where(rng.random(num_items) < 0.7, decided, 1 - decided)
  adversary = np.where(rng.random(num_items) < 0.9, 1 - decided, decided)
  item = np.repeat(np.arange(num_items), 3)
  who = np.tile(np.arange(3), num_items)
  label = np.stack([good, fair, adversary], axis=1).reshape(-1)
  labels = lab_annotators.PanelLabels(item, who, label, np.full(item.shape, 0.5))
  return labels, gold_a, gold_b, gold


def _cohen(a, b, k):
  p_o = np.mean(a == b)
  p_e = sum(np.mean(a == c) * np.mean(b == c) for c in range(k))
  return (p_o - p_e) / (1 - p_e)


def test_panel_report_matches_numpy():
  labels, gold_a, gold_b, gold = _panel()
  report = panel.panel_report(labels, gold_a, gold_b, IDS)
  decided = gold != 2
  assert report.num_items == 400 and report.num_gold_ties == 5
  for r in range(3):
    rows = (labels.annotator_A == r) & decided[labels.item_A]
    mine, truth = labels.label_A[rows], gold[labels.item_A[rows]]
    assert report.num_labels_R[r] == rows.sum() == 395
    assert report.gold_agreement_R[r] == pytest.approx(np.mean(mine == truth), abs=1e-12)
    assert report.gold_kappa_R[r] == pytest.approx(_cohen(mine, truth, 3), abs=1e-12)
  assert report.gold_agreement_R[0] > 0.85 and report.gold_agreement_R[2] < 0.15
  # Majority of three votes, a shared top count -> "tie" (wrong on a pair with a winner).
  votes = np.zeros((400, 3))
  np.add.at(votes, (labels.item_A, labels.label_A), 1)
  top = votes.max(axis=1)
  majority = np.where((votes == top[:, None]).sum(axis=1) > 1, 2, votes.argmax(axis=1))
  assert report.majority_gold_accuracy == pytest.approx(np.mean(majority[decided] == gold[decided]), abs=1e-12)
  assert report.majority_ties == int(((votes == top[:, None]).sum(axis=1) > 1).sum())
  # Fleiss' kappa with m = 3 raters per item.
  p_bar = np.mean((votes * (votes - 1)).sum(axis=1) / 6.0)
  p_e = np.sum((votes.sum(axis=0) / votes.sum()) ** 2)
  assert report.fleiss_kappa == pytest.approx((p_bar - p_e) / (1 - p_e), abs=1e-12)
  # Dawid-Skene learns that the adversary's votes point the other way: far better than majority.
  ann = agreement.validate_annotations(labels.item_A, labels.annotator_A, labels.label_A, num_classes=3)
  ds = agreement.dawid_skene(ann)
  assert report.dawid_skene_gold_accuracy == pytest.approx(np.mean(ds.label_I[decided] == gold[decided]))
  assert report.dawid_skene_gold_accuracy > report.majority_gold_accuracy + 0.1
  np.testing.assert_allclose(report.ds_reliability_R, ds.reliability_R)
  np.testing.assert_allclose(report.loo_agreement_R, agreement.leave_one_out_agreement(ann).agreement_R)
  assert report.kappa_RxR.shape == (3, 3) and np.isnan(np.diag(report.kappa_RxR)).all()
  assert report.kappa_RxR[0, 1] == pytest.approx(_cohen(labels.label_A[0::3], labels.label_A[1::3], 3))
  rows = report.rows()
  assert [r["annotator"] for r in rows] == list(IDS) and rows[0]["labels"] == 395
  assert report.summary()["pairs"] == 400


def test_noiseless_and_single_label_panels():
  labels, gold_a, gold_b, gold = _panel(num_items=50, seed=3)
  keep = labels.annotator_A == 0  # only the good annotator, one label per pair
  perfect = lab_annotators.PanelLabels(labels.item_A[keep], labels.annotator_A[keep],
                                       np.where(gold == 2, 0, gold)[labels.item_A[keep]], labels.prob_a_A[keep])
  report = panel.panel_report(perfect, gold_a, gold_b, IDS)
  assert report.gold_agreement_R[0] == 1.0 and report.gold_kappa_R[0] == pytest.approx(1.0)
  assert report.majority_gold_accuracy == 1.0
  assert np.isnan(report.fleiss_kappa)  # one judgement per pair: no agreement to measure
  assert np.isnan(report.gold_agreement_R[1:]).all() and (report.num_labels_R[1:] == 0).all()
  with pytest.raises(ValueError, match="annotator_A"):
    panel.panel_report(labels, gold_a, gold_b, IDS[:2])  # an annotator index outside the names
