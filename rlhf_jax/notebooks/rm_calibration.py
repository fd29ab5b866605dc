"""A reward model's calibration on panel-labelled pairs, with a per-annotator breakdown.

RM = reward model; ECE = expected calibration error. Under Bradley-Terry the RM predicts
P(chosen preferred) = sigmoid(r_chosen - r_rejected). Whether that probability is honest is a
question about the LABELS it is compared with: here the labels of a simulated annotator panel,
where several annotators may judge the same pair.

`orient_annotations` turns the RM's scores of both responses of every pair (a, b) and the panel's
annotation rows into (chosen, rejected) rows, as `lab.label_pairs` writes records: b is "chosen"
when the label is b, and a tie keeps a first (tie rows are left out of the probability metrics).

`calibration_study` splits the PAIRS (never one pair's annotations across both sides) into a
calibration part and a test part, fits Platt scaling and isotonic regression on the calibration
rows' margins (`evaluation.reward_model_eval.fit_pairwise_calibration`) and evaluates raw and
calibrated probabilities on the test rows (`evaluate_preferences`: accuracy, ROC-AUC, log-loss,
Brier, ECE, the gold comparison and the per-annotator breakdown).

Shape letters: I pairs (items), A annotation rows, B rows of a split.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import reward_model_eval
from rlhf_jax.lab import annotators as lab_annotators

CALIBRATION_KINDS = ("platt", "isotonic")


@dataclasses.dataclass(frozen=True)
class OrientedPairs:
  """Annotation rows as (chosen, rejected) pairs; every array is [A]."""
  r_chosen_A: np.ndarray  # RM score of the chosen response
  r_rejected_A: np.ndarray
  gold_chosen_A: np.ndarray  # gold reward of the chosen response
  gold_rejected_A: np.ndarray
  tie_A: np.ndarray  # bool: the annotator called a tie
  item_A: np.ndarray  # int: the pair
  annotator_A: np.ndarray  # int: index into the panel


def _vector(name: str, x: npt.ArrayLike, size: int | None = None) -> np.ndarray:
  arr = np.asarray(x, np.float64)
  if arr.ndim != 1 or (size is not None and arr.size != size):
    raise ValueError(f"{name} must be a vector of {size if size is not None else 'any'} entries, "
                     f"got shape {arr.shape}")
  return arr


def orient_annotations(score_a_I: npt.ArrayLike, score_b_I: npt.ArrayLike, labels: lab_annotators.PanelLabels,
                       gold_a_I: npt.ArrayLike, gold_b_I: npt.ArrayLike) -> OrientedPairs:
  """(chosen, rejected) rows of every annotation (module docstring).

  Example: scores a = [1.0], b = [3.0] and one label "b" -> r_chosen [3.0], r_rejected [1.0].
  """
  s_a = _vector("score_a_I", score_a_I)
  num_items = s_a.size
  s_b = _vector("score_b_I", score_b_I, num_items)
  g_a, g_b = _vector("gold_a_I", gold_a_I, num_items), _vector("gold_b_I", gold_b_I, num_items)
  item = np.asarray(labels.item_A, np.int64)
  if item.size and (item.min() < 0 or item.max() >= num_items):
    raise ValueError(f"labels.item_A refers to pair {int(item.max())}, but there are {num_items} pairs")
  label = np.asarray(labels.label_A, np.int64)
  b_chosen_A = label == lab_annotators.LABEL_B

  def orient(x_a: np.ndarray, x_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.where(b_chosen_A, x_b[item], x_a[item]), np.where(b_chosen_A, x_a[item], x_b[item])

  (r_c, r_r), (g_c, g_r) = orient(s_a, s_b), orient(g_a, g_b)
  return OrientedPairs(r_chosen_A=r_c, r_rejected_A=r_r, gold_chosen_A=g_c, gold_rejected_A=g_r,
                       tie_A=label == lab_annotators.LABEL_TIE, item_A=item,
                       annotator_A=np.asarray(labels.annotator_A, np.int64))


def split_items(num_items: int, calibration_fraction: float, seed: int = 0) -> np.ndarray:
  """[I] bool: the pairs of the calibration part (a seeded random `calibration_fraction` of them)."""
  if not 0.0 < calibration_fraction < 1.0:
    raise ValueError(f"calibration_fraction must lie in (0, 1), got {calibration_fraction}")
  num_cal = int(round(calibration_fraction * num_items))
  if not 0 < num_cal < num_items:
    raise ValueError(f"{num_items} pairs with calibration_fraction {calibration_fraction} leave one part empty")
  calibration_I = np.zeros(num_items, bool)
  calibration_I[np.random.default_rng(seed).permutation(num_items)[:num_cal]] = True
  return calibration_I


@dataclasses.dataclass(frozen=True)
class CalibrationStudy:
  """Output of `calibration_study`."""
  calibrations: dict[str, reward_model_eval.CalibrationMap]  # fitted on the calibration rows
  report: dict[str, Any]  # evaluate_preferences on the test rows (raw, calibrated, gold, by_annotator)
  test_margin_B: np.ndarray  # r_chosen - r_rejected of the non-tie test rows
  num_calibration_rows: int
  num_test_rows: int

  def ece_rows(self) -> list[dict[str, Any]]:
    """Raw and calibrated log-loss, Brier score and ECE on the test rows, one row each."""
    keys = ("log_loss", "brier", "ece")
    rows = [{"probabilities": "raw sigmoid(margin)", **{k: self.report[k] for k in keys}}]
    rows += [{"probabilities": name, **{k: m[k] for k in keys}} for name, m in self.report["calibrated"].items()]
    return rows

  def annotator_rows(self) -> list[dict[str, Any]]:
    """Per annotator: test rows, RM accuracy on their labels and against gold, their gold agreement."""
    return [{"annotator": name, "pairs": e["num_pairs"], "ties": e["num_ties"],
             "RM accuracy (their labels)": e["accuracy"], "RM accuracy (gold)": e.get("gold_accuracy"),
             "annotator agreement with gold": e.get("label_gold_agreement")}
            for name, e in self.report["by_annotator"].items()]


def calibration_study(pairs: OrientedPairs, annotator_ids: Sequence[str], *, calibration_fraction: float = 0.5,
                      seed: int = 0, num_bins: int = 10,
                      kinds: Sequence[str] = CALIBRATION_KINDS) -> CalibrationStudy:
  """Fits calibration maps on a share of the pairs and evaluates on the rest (module docstring)."""
  num_items = int(pairs.item_A.max()) + 1 if pairs.item_A.size else 0
  calibration_A = split_items(num_items, calibration_fraction, seed)[pairs.item_A]
  test_A = ~calibration_A
  take = lambda x, rows: np.asarray(x)[rows]  # noqa: E731
  calibrations = {kind: reward_model_eval.fit_pairwise_calibration(
      take(pairs.r_chosen_A, calibration_A), take(pairs.r_rejected_A, calibration_A), kind,
      tie_B=take(pairs.tie_A, calibration_A)) for kind in kinds}
  names = np.asarray(list(annotator_ids), dtype=object)
  report = reward_model_eval.evaluate_preferences(
      take(pairs.r_chosen_A, test_A), take(pairs.r_rejected_A, test_A), tie_B=take(pairs.tie_A, test_A),
      annotator_ids=list(names[pairs.annotator_A[test_A]]), gold_chosen_B=take(pairs.gold_chosen_A, test_A),
      gold_rejected_B=take(pairs.gold_rejected_A, test_A), calibrations=calibrations, num_bins=num_bins)
  decided = test_A & ~pairs.tie_A
  return CalibrationStudy(calibrations=calibrations, report=report,
                          test_margin_B=pairs.r_chosen_A[decided] - pairs.r_rejected_A[decided],
                          num_calibration_rows=int(calibration_A.sum()), num_test_rows=int(test_A.sum()))


def metric_rows(report: Mapping[str, Any], keys: Sequence[str]) -> list[dict[str, Any]]:
  """[{"metric": key, "value": report[key]}] for nested slash keys ("gold/spearman"), for tables."""
  rows = []
  for key in keys:
    value: Any = report
    for part in key.split("/"):
      value = value[part]
    rows.append({"metric": key, "value": value})
  return rows
