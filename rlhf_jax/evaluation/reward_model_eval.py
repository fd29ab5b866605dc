"""Held-out evaluation of a reward model (RM) on preference pairs, in float64 NumPy.

Inputs are the RM's scores of the chosen and rejected response of each pair (r_c, r_r), the
margin d = r_c - r_r, optional tie flags, annotator ids, sources and gold rewards. Under the
Bradley-Terry (BT) model the RM predicts P(chosen preferred) = sigmoid(d).

Probability metrics use the SYMMETRISED pairs: every non-tie pair contributes (d, label 1) and
(-d, label 0), i.e. both presentation orders. That makes the two classes balanced, so the
receiver operating characteristic area under the curve (ROC-AUC), the log-loss, the Brier score
and the expected calibration error (ECE) are well defined although every stored label says
"chosen". On the symmetrised set:

  accuracy   mean over non-tie pairs of 1(d > 0) + 1(d = 0) / 2
  auc        ROC-AUC of the margins: P(d_i > -d_j) + P(d_i = -d_j) / 2 over non-tie pairs i, j
  log_loss   mean_b -log sigmoid(d_b)   (both orders give the same term)
  ece        `expected_calibration_error` of sigmoid(+-d) against the labels (uniform bins)

Calibration maps (Platt scaling, isotonic regression; `calibration_maps`) are fitted on the
symmetrised margins of a calibration split (`fit_pairwise_calibration`), stored with the model
as JSON and re-evaluated here. With gold rewards (the synthetic lab), the report also gives the
accuracy against gold preferences and the Spearman / Pearson correlation between the RM's score
and the gold reward of every response. Breakdowns are per annotator and per source.

Shape letter: B pairs.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import calibration as calibration_lib
from rlhf_jax.evaluation import calibration_maps
from rlhf_jax.evaluation import classification
from rlhf_jax.evaluation import correlation
from rlhf_jax.evaluation import plots

CalibrationMap = Union[calibration_maps.PlattScaling, calibration_maps.IsotonicRegression]
CALIBRATION_FITTERS = {"platt": calibration_maps.fit_platt, "isotonic": calibration_maps.fit_isotonic}
_CALIBRATION_LOADERS = {"platt": calibration_maps.PlattScaling.from_dict,
                        "isotonic": calibration_maps.IsotonicRegression.from_dict}


def sigmoid(x: npt.ArrayLike) -> np.ndarray:
  """Numerically stable logistic function in float64."""
  x = np.asarray(x, np.float64)
  e = np.exp(-np.abs(x))
  return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _pairs(r_chosen_B: npt.ArrayLike, r_rejected_B: npt.ArrayLike,
           tie_B: Optional[npt.ArrayLike]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  r_c = correlation.as_float_vector("r_chosen_B", r_chosen_B)
  r_r = correlation.as_float_vector("r_rejected_B", r_rejected_B)
  if r_c.size != r_r.size:
    raise ValueError(f"r_chosen_B has {r_c.size} entries but r_rejected_B has {r_r.size}")
  tie = np.zeros(r_c.size, bool) if tie_B is None else np.asarray(tie_B, bool)
  if tie.shape != r_c.shape:
    raise ValueError(f"tie_B has shape {tie.shape}, expected {r_c.shape}")
  return r_c, r_r, tie


def symmetrize(margin_B: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """(margins [2B], labels [2B]): (d, 1) for each pair, then (-d, 0)."""
  d = correlation.as_float_vector("margin_B", margin_B)
  return np.concatenate([d, -d]), np.concatenate([np.ones_like(d), np.zeros_like(d)])


def fit_pairwise_calibration(r_chosen_B: npt.ArrayLike, r_rejected_B: npt.ArrayLike, kind: str,
                             tie_B: Optional[npt.ArrayLike] = None) -> CalibrationMap:
  """Fits a map from margin r_c - r_r to P(chosen preferred) on the symmetrised non-tie pairs.

  Args:
    r_chosen_B, r_rejected_B: RM scores on the calibration split.
    kind: "platt" (sigmoid(a d + b)) or "isotonic" (monotone step function, PAV).
    tie_B: optional tie flags; tie pairs are left out.

  Returns:
    The fitted map: `map(margins) -> probabilities`, with `to_dict()` for JSON.
  """
  if kind not in CALIBRATION_FITTERS:
    raise ValueError(f"calibration kind must be one of {sorted(CALIBRATION_FITTERS)}, got {kind!r}")
  r_c, r_r, tie = _pairs(r_chosen_B, r_rejected_B, tie_B)
  if not np.any(~tie):
    raise ValueError("fit_pairwise_calibration needs at least one non-tie pair")
  x, y = symmetrize((r_c - r_r)[~tie])
  return CALIBRATION_FITTERS[kind](x, y)


def calibration_from_dict(state: Mapping[str, Any]) -> CalibrationMap:
  """Inverse of `map.to_dict()` for either calibration kind."""
  kind = state.get("kind") if isinstance(state, Mapping) else None
  if kind not in _CALIBRATION_LOADERS:
    raise ValueError(f"calibration state needs kind in {sorted(_CALIBRATION_LOADERS)}, got "
                     f"{kind!r}")
  return _CALIBRATION_LOADERS[kind](state)


def pairwise_probability(margin_B: npt.ArrayLike,
                         calibration: Optional[CalibrationMap] = None) -> np.ndarray:
  """P(first response preferred) from a margin: calibration(d), or sigmoid(d) without a map."""
  d = np.asarray(margin_B, np.float64)
  return sigmoid(d) if calibration is None else np.clip(calibration(d), 0.0, 1.0)


def probability_metrics(margin_B: npt.ArrayLike, calibration: Optional[CalibrationMap] = None,
                        num_bins: int = 10) -> dict[str, float]:
  """log_loss, brier and ece of the (calibrated) probabilities on the symmetrised pairs."""
  x, y = symmetrize(margin_B)
  p = pairwise_probability(x, calibration)
  return {"log_loss": classification.log_loss(p, y), "brier": classification.brier_score(p, y),
          "ece": calibration_lib.expected_calibration_error(p, y, num_bins=num_bins)}


def _accuracy(margin_B: np.ndarray) -> float:
  return classification.accuracy(margin_B, np.ones_like(margin_B), threshold=0.0)


def _group_report(groups: Sequence[Any], margin_B: np.ndarray, decided_B: np.ndarray,
                  gold_margin_B: Optional[np.ndarray]) -> dict[str, dict[str, float]]:
  """Per group (annotator or source): pair counts, accuracy vs the labels and vs gold."""
  groups = np.asarray([str(g) for g in groups], dtype=object)
  if groups.shape != margin_B.shape:
    raise ValueError(f"group labels have {groups.size} entries for {margin_B.size} pairs")
  out = {}
  for g in sorted(set(groups.tolist())):
    rows = groups == g
    entry: dict[str, float] = {"num_pairs": int(rows.sum()), "num_ties": int((rows & ~decided_B).sum())}
    labelled = rows & decided_B
    entry["accuracy"] = _accuracy(margin_B[labelled]) if labelled.any() else float("nan")
    if gold_margin_B is not None:
      entry.update(_gold_accuracy(margin_B[rows], gold_margin_B[rows]))
      # How often this group's labels agree with gold (gold ties left out): the annotators'
      # own reliability, against which the RM's gold accuracy can be read.
      judged = labelled & (gold_margin_B != 0)
      entry["label_gold_agreement"] = (float(np.mean(gold_margin_B[judged] > 0)) if judged.any()
                                       else float("nan"))
    out[g] = entry
  return out


def _gold_accuracy(margin_B: np.ndarray, gold_margin_B: np.ndarray) -> dict[str, float]:
  """Accuracy of the RM's margin sign against the gold preference (gold ties left out)."""
  keep = gold_margin_B != 0
  if not keep.any():
    return {"gold_accuracy": float("nan"), "gold_num_pairs": 0}
  oriented = np.where(gold_margin_B[keep] > 0, margin_B[keep], -margin_B[keep])
  return {"gold_accuracy": _accuracy(oriented), "gold_num_pairs": int(keep.sum())}


def evaluate_preferences(r_chosen_B: npt.ArrayLike, r_rejected_B: npt.ArrayLike, *,
                         tie_B: Optional[npt.ArrayLike] = None,
                         annotator_ids: Optional[Sequence[Any]] = None,
                         sources: Optional[Sequence[Any]] = None,
                         gold_chosen_B: Optional[npt.ArrayLike] = None,
                         gold_rejected_B: Optional[npt.ArrayLike] = None,
                         calibrations: Optional[Mapping[str, CalibrationMap]] = None,
                         num_bins: int = 10) -> dict[str, Any]:
  """The evaluation report of an RM on labelled pairs (module docstring for the definitions).

  Args:
    r_chosen_B, r_rejected_B: RM scores of the chosen and rejected responses.
    tie_B: pairs labelled as ties; excluded from accuracy and probability metrics, reported
      through "tie_mean_abs_margin" (a tie-aware RM keeps it small).
    annotator_ids, sources: per-pair group labels for the breakdowns.
    gold_chosen_B, gold_rejected_B: gold rewards of both responses (both or neither).
    calibrations: named calibration maps to evaluate, e.g. {"platt": ..., "isotonic": ...}.
    num_bins: uniform bins of the ECE.

  Returns:
    A JSON-ready dict: num_pairs, num_ties, accuracy, auc, log_loss, brier, ece, mean_margin,
    tie_mean_abs_margin, calibrated/<name>/{log_loss, brier, ece}, gold/{accuracy, num_pairs,
    spearman, pearson}, by_annotator/<id>/..., by_source/<source>/....

  Example:
    >>> evaluate_preferences([1.0, 0.5], [0.0, 1.0])["accuracy"]
    0.5
  """
  r_c, r_r, tie = _pairs(r_chosen_B, r_rejected_B, tie_B)
  decided = ~tie
  if not decided.any():
    raise ValueError("evaluate_preferences needs at least one non-tie pair")
  margin = r_c - r_r
  d = margin[decided]
  x, y = symmetrize(d)
  report: dict[str, Any] = {
      "num_pairs": int(r_c.size), "num_ties": int(tie.sum()),
      "accuracy": _accuracy(d), "auc": classification.roc_auc(x, y),
      **probability_metrics(d, None, num_bins),
      "mean_margin": float(d.mean()),
      "tie_mean_abs_margin": float(np.abs(margin[tie]).mean()) if tie.any() else float("nan"),
  }
  report["calibrated"] = {name: probability_metrics(d, cal, num_bins)
                          for name, cal in (calibrations or {}).items()}
  gold_margin = None
  if (gold_chosen_B is None) != (gold_rejected_B is None):
    raise ValueError("give both gold_chosen_B and gold_rejected_B, or neither")
  if gold_chosen_B is not None:
    g_c, g_r, _ = _pairs(gold_chosen_B, gold_rejected_B, None)
    if g_c.size != r_c.size:
      raise ValueError(f"gold rewards have {g_c.size} entries for {r_c.size} pairs")
    gold_margin = g_c - g_r
    scores, golds = np.concatenate([r_c, r_r]), np.concatenate([g_c, g_r])
    gold = _gold_accuracy(margin, gold_margin)
    report["gold"] = {"accuracy": gold["gold_accuracy"], "num_pairs": gold["gold_num_pairs"],
                      "spearman": correlation.spearman(scores, golds),
                      "pearson": correlation.pearson(scores, golds)}
  for key, groups in (("by_annotator", annotator_ids), ("by_source", sources)):
    if groups is not None:
      report[key] = _group_report(groups, margin, decided, gold_margin)
  return report


def flat_metrics(report: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """Scalar entries of a report as slash-named floats ("gold/spearman"), for metric writers.

  The per-group breakdowns are left out (they are in the JSON report).
  """
  out = {}
  for key, value in report.items():
    if key in ("by_annotator", "by_source"):
      continue
    if isinstance(value, Mapping):
      out.update(flat_metrics(value, f"{prefix}{key}/"))
    elif isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
      out[f"{prefix}{key}"] = float(value)
  return out


def _clean(value: Any) -> Any:
  """JSON-ready copy: NumPy scalars to Python numbers, NaN and infinities to None."""
  if isinstance(value, Mapping):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  if isinstance(value, (np.floating, np.integer)):
    value = value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value


def to_json(report: Mapping[str, Any]) -> str:
  """Indented JSON of a report (or any nested dict of numbers), NaN written as null."""
  return json.dumps(_clean(report), indent=2, sort_keys=True)


def write_report(report: Mapping[str, Any], path: Union[str, os.PathLike]) -> pathlib.Path:
  """Writes `to_json(report)` to `path`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(to_json(report))
  return path


def write_reliability_diagram(r_chosen_B: npt.ArrayLike, r_rejected_B: npt.ArrayLike,
                              path: Union[str, os.PathLike], *,
                              tie_B: Optional[npt.ArrayLike] = None,
                              calibration: Optional[CalibrationMap] = None, num_bins: int = 10,
                              title: str = "reward model") -> calibration_lib.ReliabilityDiagram:
  """PNG reliability diagram of P(chosen preferred) on the symmetrised non-tie pairs."""
  r_c, r_r, tie = _pairs(r_chosen_B, r_rejected_B, tie_B)
  x, y = symmetrize((r_c - r_r)[~tie])
  return plots.plot_reliability_diagram(pairwise_probability(x, calibration), y, path,
                                        num_bins=num_bins, title=title)
