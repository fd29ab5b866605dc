"""Tests for rlhf_jax.evaluation.classification against brute-force references."""
import numpy as np
import pytest

from rlhf_jax.evaluation import classification as cls


def _pairs(seed, n=60):
  rng = np.random.default_rng(seed)
  labels = (rng.random(n) < 0.4).astype(float)
  scores = np.round(labels * 0.8 + rng.normal(size=n), 1)  # rounding makes ties
  return scores, labels


def test_accuracy_counts_threshold_ties_half():
  assert cls.accuracy([0.3, -1.0, 0.0], [1, 1, 1], threshold=0.0) == pytest.approx(1.5 / 3)
  scores, labels = _pairs(0)
  for t in (0.0, 0.5, 0.3):
    ref = np.mean([1.0 if (s > t and y == 1) or (s < t and y == 0) else 0.5 if s == t else 0.0
                   for s, y in zip(scores, labels)])
    assert cls.accuracy(scores, labels, threshold=t) == pytest.approx(ref)
  assert np.sum(scores == 0.3) > 0  # the threshold-tie branch was exercised


def test_roc_auc_equals_pairwise_count_with_ties():
  assert cls.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
  for seed in range(3):
    scores, labels = _pairs(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    assert cls.roc_auc(scores, labels) == pytest.approx(wins / (pos.size * neg.size), abs=1e-12)
    # Rank-based: invariant under a strictly increasing transform.
    assert cls.roc_auc(np.exp(3 * scores), labels) == pytest.approx(cls.roc_auc(scores, labels))
  assert cls.roc_auc([1.0, 1.0, 1.0], [0, 1, 0]) == pytest.approx(0.5)


def test_log_loss_and_brier_match_formulas_with_soft_labels():
  probs = np.array([0.9, 0.2, 0.6, 0.5, 1.0])
  labels = np.array([1.0, 0.0, 0.7, 1.0, 1.0])
  ref = -np.mean([y * np.log(max(p, 1e-12)) + (1 - y) * np.log(max(1 - p, 1e-12)) for p, y in zip(probs, labels)])
  assert cls.log_loss(probs, labels) == pytest.approx(ref, rel=1e-12)
  assert cls.brier_score(probs, labels) == pytest.approx(np.mean([(p - y) ** 2 for p, y in zip(probs, labels)]))
  assert cls.brier_score([0.5] * 4, [0, 1, 1, 0]) == pytest.approx(0.25)
  assert cls.log_loss([0.5] * 4, [0, 1, 1, 0]) == pytest.approx(np.log(2.0))
  assert np.isfinite(cls.log_loss([0.0], [1.0]))  # clipped, not inf


@pytest.mark.parametrize("call, message", [
    (lambda: cls.roc_auc([0.1, 0.2], [1, 1]), "needs both classes"),
    (lambda: cls.accuracy([0.1, 0.2], [1, 2]), "labels_B must lie in {0, 1}; entry 1"),
    (lambda: cls.log_loss([0.1, 1.2], [1, 0]), "probs_B must lie in \\[0, 1\\]; entry 1"),
    (lambda: cls.brier_score([0.1, np.nan], [1, 0]), "probs_B must be finite; entry 1"),
    (lambda: cls.accuracy([0.1, 0.2], [1]), "labels_B has 1 entries"),
])
def test_bad_input_is_named(call, message):
  with pytest.raises(ValueError, match=message):
    call()
