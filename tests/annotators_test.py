"""Tests for rlhf_jax.data.annotators against hand computations and simulated panels."""
from fractions import Fraction

import numpy as np
import pytest

from rlhf_jax.data import annotators as ann_lib

# Fleiss (1971) example as reproduced on Wikipedia: 10 items, 14 raters each, 5 categories.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def _rows_from_table(table):
  """Expands a count table into annotation rows (rater ids are arbitrary but distinct per item)."""
  item, annotator, label = [], [], []
  for i, row in enumerate(table):
    r = 0
    for y, n in enumerate(row):
      for _ in range(n):
        item.append(i), annotator.append(r), label.append(y)
        r += 1
  return item, annotator, label


def _simulate_panel(seed, num_items, accuracies, prior, coverage=1.0):
  """True labels ~ prior; annotator r copies the truth w.p. accuracies[r], else a uniform other label."""
  rng = np.random.default_rng(seed)
  num_y = len(prior)
  truth = rng.choice(num_y, size=num_items, p=prior)
  item, annotator, label = [], [], []
  for r, acc in enumerate(accuracies):
    judged = np.flatnonzero(rng.random(num_items) < coverage)
    correct = rng.random(judged.size) < acc
    offset = rng.integers(1, num_y, size=judged.size)  # a uniformly chosen *other* class
    item.append(judged)
    annotator.append(np.full(judged.size, r))
    label.append(np.where(correct, truth[judged], (truth[judged] + offset) % num_y))
  ann = ann_lib.validate_annotations(np.concatenate(item), np.concatenate(annotator),
                                     np.concatenate(label), num_classes=num_y, num_items=num_items)
  return ann, truth


def test_cohen_kappa_textbook_two_by_two():
  # 50 items: yes/yes 20, a-yes/b-no 5, a-no/b-yes 10, no/no 15 (1 = yes).
  a = [1] * 20 + [1] * 5 + [0] * 10 + [0] * 15
  b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
  p_o = Fraction(35, 50)
  p_e = Fraction(25, 50) * Fraction(30, 50) + Fraction(25, 50) * Fraction(20, 50)
  expected = (p_o - p_e) / (1 - p_e)
  assert expected == Fraction(2, 5)
  assert ann_lib.cohen_kappa(a, b, num_classes=2) == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_three_classes_against_contingency_table():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 3, size=40)
  b = np.where(rng.random(40) < 0.6, a, rng.integers(0, 3, size=40))
  table = [[sum(1 for x, y in zip(a, b) if x == i and y == j) for j in range(3)] for i in range(3)]
  n = Fraction(40)
  p_o = sum(Fraction(table[k][k]) for k in range(3)) / n
  p_e = sum(Fraction(sum(table[k])) / n * Fraction(sum(row[k] for row in table)) / n for k in range(3))
  expected = float((p_o - p_e) / (1 - p_e))
  assert 0.2 < expected < 0.9  # a non-trivial value
  assert ann_lib.cohen_kappa(a, b, num_classes=3) == pytest.approx(expected, abs=1e-12)
  assert ann_lib.cohen_kappa(a, a, num_classes=3) == pytest.approx(1.0)
  assert np.isnan(ann_lib.cohen_kappa([1, 1, 1], [1, 1, 1], num_classes=3))


def test_pairwise_cohen_kappa_uses_shared_items():
  item = [0, 1, 2, 3, 0, 1, 2, 3, 2, 3]
  annotator = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
  label = [0, 1, 0, 1, 0, 1, 1, 1, 0, 1]
  ann = ann_lib.validate_annotations(item, annotator, label, num_classes=2)
  k = ann_lib.pairwise_cohen_kappa(ann)
  assert k.shape == (3, 3) and np.all(np.isnan(np.diag(k)))
  assert k[0, 1] == pytest.approx(ann_lib.cohen_kappa([0, 1, 0, 1], [0, 1, 1, 1], 2))
  assert k[0, 2] == pytest.approx(1.0) and k[2, 0] == k[0, 2]
  assert np.isnan(ann_lib.pairwise_cohen_kappa(ann, min_shared_items=3)[0, 2])


def test_fleiss_kappa_textbook_table_by_hand():
  n_raters = 14
  p_i = [Fraction(sum(c * c for c in row) - n_raters, n_raters * (n_raters - 1)) for row in FLEISS_TABLE]
  p_bar = sum(p_i) / len(p_i)
  total = len(FLEISS_TABLE) * n_raters
  p_j = [Fraction(sum(row[j] for row in FLEISS_TABLE), total) for j in range(5)]
  p_e = sum(p * p for p in p_j)
  expected = float((p_bar - p_e) / (1 - p_e))
  assert round(expected, 3) == 0.210  # the published value
  item, annotator, label = _rows_from_table(FLEISS_TABLE)
  ann = ann_lib.validate_annotations(item, annotator, label, num_classes=5)
  np.testing.assert_array_equal(ann_lib.vote_counts(ann), FLEISS_TABLE)
  assert ann_lib.fleiss_kappa(ann_lib.vote_counts(ann)) == pytest.approx(expected, abs=1e-12)


def test_fleiss_kappa_variable_raters_by_hand():
  table = [[3, 0, 0], [1, 1, 0], [0, 2, 2], [1, 0, 0], [0, 0, 4]]  # m_i = 3, 2, 4, 1 (dropped), 4
  kept = [row for row in table if sum(row) >= 2]
  p_i = [Fraction(sum(c * (c - 1) for c in row), sum(row) * (sum(row) - 1)) for row in kept]
  total = sum(sum(row) for row in kept)
  p_e = sum(Fraction(sum(row[j] for row in kept), total) ** 2 for j in range(3))
  expected = float((sum(p_i) / len(p_i) - p_e) / (1 - p_e))
  assert ann_lib.fleiss_kappa(table) == pytest.approx(expected, abs=1e-12)


def test_fleiss_kappa_with_two_raters_is_scotts_pi():
  rng = np.random.default_rng(1)
  a = rng.integers(0, 3, size=60)
  b = np.where(rng.random(60) < 0.5, a, rng.integers(0, 3, size=60))
  pooled = np.bincount(np.concatenate([a, b]), minlength=3) / 120.0
  p_e = np.sum(pooled**2)
  scotts_pi = (np.mean(a == b) - p_e) / (1 - p_e)
  counts = np.zeros((60, 3))
  np.add.at(counts, (np.arange(60), a), 1)
  np.add.at(counts, (np.arange(60), b), 1)
  assert ann_lib.fleiss_kappa(counts) == pytest.approx(scotts_pi, abs=1e-12)


def test_majority_vote_reports_and_breaks_ties():
  # item 0: 2x label 1, 1x label 0; item 1: tie between 0 and 1; item 2: nobody; item 3: one vote 2.
  ann = ann_lib.validate_annotations([0, 0, 0, 1, 1, 3], [0, 1, 2, 0, 1, 2], [1, 1, 0, 1, 0, 2],
                                     num_classes=3)
  mv = ann_lib.majority_vote(ann)
  np.testing.assert_array_equal(mv.label_I, [1, 0, -1, 2])
  np.testing.assert_array_equal(mv.tied_I, [False, True, False, False])
  assert mv.num_tied == 1
  np.testing.assert_array_equal(ann_lib.majority_vote(ann, tie_label=2).label_I, [1, 2, -1, 2])


def test_leave_one_out_agreement_by_hand():
  # item 0: r0=0 r1=0 r2=1 ; item 1: r0=1 r1=0 ; item 2: r0=1 r1=1 r2=1 ; item 3: r2=0 only.
  item = [0, 0, 0, 1, 1, 2, 2, 2, 3]
  annotator = [0, 1, 2, 0, 1, 0, 1, 2, 2]
  label = [0, 0, 1, 1, 0, 1, 1, 1, 0]
  res = ann_lib.leave_one_out_agreement(ann_lib.validate_annotations(item, annotator, label, num_classes=2))
  # r0: item0 others {0,1} tied -> skipped; item1 others {0} -> mismatch; item2 others {1,1} -> match.
  # r1: item0 others {0,1} tied; item1 others {1} mismatch; item2 match.
  # r2: item0 others {0,0} mismatch; item2 match; item3 no others.
  np.testing.assert_allclose(res.agreement_R, [0.5, 0.5, 0.5])
  np.testing.assert_array_equal(res.num_scored_R, [2, 2, 2])
  np.testing.assert_array_equal(res.num_tied_R, [1, 1, 0])


@pytest.mark.parametrize("prior", [(0.55, 0.45), (0.45, 0.4, 0.15)])
def test_dawid_skene_recovers_reliabilities_and_beats_majority(prior):
  accuracies = np.array([0.95, 0.9, 0.6, 0.55, 0.5, 0.2])
  ann, truth = _simulate_panel(seed=3, num_items=2000, accuracies=accuracies, prior=prior, coverage=0.9)
  res = ann_lib.dawid_skene(ann)
  assert res.converged
  # 2000 items x 0.9 coverage: binomial std of an accuracy is <= 0.012; 0.05 is ~4 sigma.
  np.testing.assert_allclose(res.reliability_R, accuracies, atol=0.05)
  np.testing.assert_allclose(res.prior_Y, prior, atol=0.04)
  ds_acc = np.mean(res.label_I == truth)
  mv_acc = np.mean(ann_lib.majority_vote(ann).label_I == truth)
  assert ds_acc > mv_acc + 0.05, (ds_acc, mv_acc)
  # Oracle: the Bayes posterior under the *true* simulation parameters, computed independently.
  num_y = len(prior)
  log_post = np.tile(np.log(prior), (ann.num_items, 1))
  for i, r, y in zip(ann.item_A, ann.annotator_A, ann.label_A):
    log_post[i] += np.where(np.arange(num_y) == y, np.log(accuracies[r]),
                            np.log((1 - accuracies[r]) / (num_y - 1)))
  oracle_acc = np.mean(np.argmax(log_post, axis=1) == truth)
  assert ds_acc > oracle_acc - 0.01, (ds_acc, oracle_acc)
  # EM never decreases its (penalised) log-likelihood.
  assert np.all(np.diff(res.log_likelihood_history) > -1e-8 * np.abs(res.log_likelihood))
  np.testing.assert_allclose(res.posterior_IxY.sum(axis=1), 1.0)
  np.testing.assert_allclose(res.confusion_RxYxY.sum(axis=2), 1.0)


def test_dawid_skene_is_a_fixed_point_of_hand_written_em():
  ann, _ = _simulate_panel(seed=5, num_items=30, accuracies=[0.9, 0.7, 0.6, 0.3], prior=(0.5, 0.3, 0.2),
                           coverage=0.8)
  s = 0.01
  res = ann_lib.dawid_skene(ann, confusion_smoothing=s, prior_smoothing=s, tol=1e-14, max_iters=5000)
  # E-step written with loops from the returned parameters reproduces the returned posterior.
  post = np.zeros((ann.num_items, 3))
  for i in range(ann.num_items):
    for y in range(3):
      logp = np.log(res.prior_Y[y])
      for a in range(ann.item_A.size):
        if ann.item_A[a] == i:
          logp += np.log(res.confusion_RxYxY[ann.annotator_A[a], y, ann.label_A[a]])
      post[i, y] = np.exp(logp)
    post[i] /= post[i].sum()
  np.testing.assert_allclose(res.posterior_IxY, post, atol=1e-6)
  # M-step written with loops from that posterior reproduces the returned parameters.
  conf = np.full((4, 3, 3), s)
  for a in range(ann.item_A.size):
    conf[ann.annotator_A[a], :, ann.label_A[a]] += post[ann.item_A[a]]
  conf /= conf.sum(axis=2, keepdims=True)
  np.testing.assert_allclose(res.confusion_RxYxY, conf, atol=1e-6)
  np.testing.assert_allclose(res.prior_Y, (post.sum(0) + s) / (post.sum() + 3 * s), atol=1e-6)
  # Reliability is the prior-weighted diagonal.
  np.testing.assert_allclose(res.reliability_R,
                             [sum(res.prior_Y[y] * conf[r, y, y] for y in range(3)) for r in range(4)],
                             atol=1e-6)


def test_dawid_skene_is_deterministic_and_handles_unjudged_items():
  ann, _ = _simulate_panel(seed=7, num_items=50, accuracies=[0.9, 0.8, 0.7], prior=(0.6, 0.4))
  ann = ann._replace(num_items=52)  # two items nobody judged
  a, b = ann_lib.dawid_skene(ann), ann_lib.dawid_skene(ann)
  np.testing.assert_array_equal(a.posterior_IxY, b.posterior_IxY)
  np.testing.assert_allclose(a.posterior_IxY[50:], np.stack([a.prior_Y] * 2))


def test_preference_targets():
  post = np.array([[0.7, 0.1, 0.2], [0.1, 0.3, 0.6], [0.2, 0.8, 0.0]])
  t = ann_lib.preference_targets(post)
  np.testing.assert_array_equal(t.label_I, [0, 2, 1])
  np.testing.assert_allclose(t.confidence_I, [0.7, 0.6, 0.8])
  np.testing.assert_allclose(t.prob_a_preferred_I, [0.8, 0.4, 0.2])
  np.testing.assert_allclose(ann_lib.preference_targets(post[:, :2], tie_label=None).prob_a_preferred_I,
                             [0.7, 0.1, 0.2])


@pytest.mark.parametrize("kwargs, message", [
    (dict(item_A=[0, 1], annotator_A=[0], label_A=[0, 1]), "equal lengths"),
    (dict(item_A=[0, -1], annotator_A=[0, 0], label_A=[0, 1]), "item_A must be non-negative; row 1"),
    (dict(item_A=[0, 1], annotator_A=[0, 0], label_A=[0, 3]), "label_A row 1 is 3"),
    (dict(item_A=[0, 1.5], annotator_A=[0, 0], label_A=[0, 1]), "item_A must hold integers; row 1"),
    (dict(item_A=[[0]], annotator_A=[0], label_A=[0]), "item_A must be 1-D"),
])
def test_validation_errors_name_field_and_row(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ann_lib.validate_annotations(**kwargs, num_classes=3)
