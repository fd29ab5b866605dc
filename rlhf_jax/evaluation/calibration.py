"""Calibration of predicted preference probabilities: reliability-diagram data and the expected
calibration error (ECE, Naeini et al. 2015; Guo et al. 2017), in float64 NumPy.

Two binnings:
  * "uniform" (equal width): bin m covers [m/M, (m+1)/M), the last bin also includes 1.0.
  * "quantile" (equal mass): examples sorted by probability (stable sort) are split into M
    consecutive groups whose sizes differ by at most one. Equal probabilities can land in
    adjacent bins; a bin's range is the [min, max] of the probabilities it holds.

Two views of a binary prediction:
  * default: calibration of p = P(label = 1) against the observed frequency of label 1;
  * `top_label=True`: confidence max(p, 1 - p) against the accuracy of the predicted label
    (1 when p >= 0.5), as in Guo et al. 2017.

Shape letter: B predictions.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import classification

STRATEGIES = ("uniform", "quantile")


@dataclasses.dataclass(frozen=True)
class ReliabilityDiagram:
  """Per-bin statistics; every array has one entry per bin ([num_bins]). Empty bins hold NaN."""
  bin_lower: np.ndarray
  bin_upper: np.ndarray
  confidence: np.ndarray  # mean predicted probability (or top-label confidence) in the bin
  frequency: np.ndarray  # observed frequency of label 1 (or top-label accuracy) in the bin
  count: np.ndarray  # number of predictions in the bin

  @property
  def ece(self) -> float:
    """sum_m (count_m / B) |frequency_m - confidence_m| over non-empty bins."""
    keep = self.count > 0
    gap = np.abs(self.frequency[keep] - self.confidence[keep])
    return float(np.sum(self.count[keep] * gap) / np.sum(self.count))

  @property
  def mce(self) -> float:
    """Maximum calibration error: the largest |frequency_m - confidence_m| over non-empty bins."""
    keep = self.count > 0
    return float(np.max(np.abs(self.frequency[keep] - self.confidence[keep])))


def reliability_diagram(probs_B: npt.ArrayLike, labels_B: npt.ArrayLike, num_bins: int = 10,
                        strategy: str = "uniform", top_label: bool = False) -> ReliabilityDiagram:
  """Bins predictions and returns per-bin confidence, observed frequency and count.

  Example: probs [0.1, 0.15, 0.9] with labels [0, 1, 1] and 2 uniform bins give confidences
  [0.125, 0.9], frequencies [0.5, 1.0], counts [2, 1] and ECE (2 * 0.375 + 0.1) / 3.
  """
  p = classification.check_probs(probs_B)
  y = classification.check_labels(labels_B, p.size)
  if p.size == 0:
    raise ValueError("reliability_diagram needs at least one prediction")
  if num_bins < 1:
    raise ValueError(f"num_bins must be >= 1, got {num_bins}")
  if top_label:
    predicted = (p >= 0.5).astype(np.float64)
    p, y = np.maximum(p, 1.0 - p), (predicted == y).astype(np.float64)
  if strategy == "uniform":
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bin_B = np.minimum((p * num_bins).astype(np.int64), num_bins - 1)
    lower, upper = edges[:-1], edges[1:]
  elif strategy == "quantile":
    order = np.argsort(p, kind="stable")
    bin_B = np.empty(p.size, np.int64)
    for m, idx in enumerate(np.array_split(order, num_bins)):
      bin_B[idx] = m
    lower = np.full(num_bins, np.nan)
    upper = np.full(num_bins, np.nan)
  else:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
  count = np.bincount(bin_B, minlength=num_bins).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    confidence = np.bincount(bin_B, p, num_bins) / count
    frequency = np.bincount(bin_B, y, num_bins) / count
  if strategy == "quantile":
    for m in np.flatnonzero(count):
      lower[m], upper[m] = p[bin_B == m].min(), p[bin_B == m].max()
  return ReliabilityDiagram(lower, upper, confidence, frequency, count.astype(np.int64))


def expected_calibration_error(probs_B: npt.ArrayLike, labels_B: npt.ArrayLike, num_bins: int = 10,
                               strategy: str = "uniform", top_label: bool = False) -> float:
  """ECE = sum_m (|bin_m| / B) |frequency_m - confidence_m|; see the module docstring for bins."""
  return reliability_diagram(probs_B, labels_B, num_bins, strategy, top_label).ece
