"""Binary classification metrics for preference pairs, in float64 NumPy.

A reward model scores a pair by the margin r(a) - r(b) or by a probability p = P(a preferred);
labels are 1 when "a" is preferred and 0 otherwise. Metrics: accuracy, receiver operating
characteristic area under the curve (ROC-AUC), log-loss (binary cross-entropy) and Brier score.

Shape letter: B pairs.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import correlation


def check_labels(labels_B: npt.ArrayLike, size: int, *, soft: bool = False) -> np.ndarray:
  """Returns labels as float64, checking they are in {0, 1} (or [0, 1] when `soft`)."""
  y = correlation.as_float_vector("labels_B", labels_B)
  if y.size != size:
    raise ValueError(f"labels_B has {y.size} entries but the scores have {size}")
  bad = (y < 0) | (y > 1) if soft else (y != 0) & (y != 1)
  if np.any(bad):
    i = int(np.flatnonzero(bad)[0])
    allowed = "[0, 1]" if soft else "{0, 1}"
    raise ValueError(f"labels_B must lie in {allowed}; entry {i} is {y[i]}")
  return y


def check_probs(probs_B: npt.ArrayLike) -> np.ndarray:
  """Returns probabilities as float64, checking they lie in [0, 1]."""
  p = correlation.as_float_vector("probs_B", probs_B)
  if np.any((p < 0) | (p > 1)):
    i = int(np.flatnonzero((p < 0) | (p > 1))[0])
    raise ValueError(f"probs_B must lie in [0, 1]; entry {i} is {p[i]}")
  return p


def accuracy(scores_B: npt.ArrayLike, labels_B: npt.ArrayLike, threshold: float = 0.5) -> float:
  """Fraction of pairs on the correct side of `threshold`; a score exactly at it counts half.

    acc = mean_b [1(s_b > t) y_b + 1(s_b < t) (1 - y_b) + 1(s_b = t) / 2].

  Counting exact ties as half keeps a constant predictor at 0.5 accuracy. For reward margins use
  threshold 0: accuracy([0.3, -1.0, 0.0], [1, 1, 1], threshold=0) == (1 + 0 + 0.5) / 3.
  """
  s = correlation.as_float_vector("scores_B", scores_B)
  y = check_labels(labels_B, s.size)
  if s.size == 0:
    raise ValueError("accuracy needs at least one pair")
  correct = np.where(s > threshold, y, np.where(s < threshold, 1.0 - y, 0.5))
  return float(np.mean(correct))


def roc_auc(scores_B: npt.ArrayLike, labels_B: npt.ArrayLike) -> float:
  """ROC-AUC via the Mann-Whitney U statistic (Hanley & McNeil 1982), ties counted half.

    AUC = P(s_pos > s_neg) + P(s_pos = s_neg) / 2
        = (sum of average ranks of the positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg).

  Example: roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75. Raises if a class is absent.
  """
  s = correlation.as_float_vector("scores_B", scores_B)
  y = check_labels(labels_B, s.size)
  n_pos = float(y.sum())
  n_neg = float(y.size - n_pos)
  if n_pos == 0 or n_neg == 0:
    raise ValueError(f"roc_auc needs both classes; got {n_pos:.0f} positives and {n_neg:.0f} "
                     "negatives")
  ranks = correlation.average_ranks(s)
  return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(probs_B: npt.ArrayLike, labels_B: npt.ArrayLike, eps: float = 1e-12) -> float:
  """Mean binary cross-entropy -mean[y log p + (1 - y) log(1 - p)], p clipped to [eps, 1 - eps].

  Soft labels in [0, 1] are allowed (e.g. aggregated annotator posteriors). Natural log, nats.
  """
  p = np.clip(check_probs(probs_B), eps, 1.0 - eps)
  y = check_labels(labels_B, p.size, soft=True)
  return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def brier_score(probs_B: npt.ArrayLike, labels_B: npt.ArrayLike) -> float:
  """Brier score mean[(p - y)^2] (Brier 1950); 0.25 for constant 0.5. Soft labels allowed."""
  p = check_probs(probs_B)
  y = check_labels(labels_B, p.size, soft=True)
  return float(np.mean((p - y) ** 2))
