"""Figures of the notebooks, written as PNG files with matplotlib's object API on an Agg canvas.

  metric_series         (x, y) of one metric from metrics.jsonl records (or a run's history)
  gold_vs_kl_series     gold reward against KL to the SFT policy for best-of-N, DPO and PPO
  plot_rollout_tokens   one PPO rollout, token by token: log-probs, KL, rewards, values, GAE
  plot_matrix           a labelled heat map (e.g. annotators' pairwise Cohen's kappa)
  plot_reliability_comparison
                        reliability diagrams of raw and calibrated reward-model probabilities

Simple line plots go through `rlhf_jax.evaluation.plots.plot_curves`. Acronyms: KL =
Kullback-Leibler; SFT = Supervised Fine-Tuning; DPO = Direct Preference Optimization; PPO =
Proximal Policy Optimization; GAE = Generalized Advantage Estimation; ECE = expected calibration
error. matplotlib is imported on first use.
"""
from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import calibration as calibration_lib
from rlhf_jax.evaluation import reward_model_eval

PathLike = Union[str, os.PathLike]
Series = tuple[np.ndarray, np.ndarray]


def _figure(figsize: tuple[float, float]):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, format="png", dpi=100)
  return path


def _finite(value: Any) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value))


def metric_series(records: Sequence[Mapping[str, Any]], y_key: str, x_key: str = "step") -> Series:
  """(x, y) float64 arrays over the records that hold finite values of both keys, in order.

  Example: metric_series([{"step": 1, "loss": 2.0}, {"step": 2}], "loss") -> ([1.], [2.]).
  """
  pts = [(float(r[x_key]), float(r[y_key])) for r in records
         if _finite(r.get(x_key)) and _finite(r.get(y_key))]
  if not pts:
    return np.zeros(0), np.zeros(0)
  x, y = zip(*pts)
  return np.asarray(x), np.asarray(y)


def gold_vs_kl_series(*, best_of_n_rows: Optional[Sequence[Mapping[str, Any]]] = None,
                      dpo_summary: Optional[Mapping[str, Any]] = None,
                      dpo_records: Sequence[Mapping[str, Any]] = (),
                      ppo_records: Sequence[Mapping[str, Any]] = (),
                      dpo_kl_key: str = "eval/kl/full") -> dict[str, Series]:
  """Gold reward against KL to the SFT policy (nats per response), one series per method.

  Args:
    best_of_n_rows: `run_best_of_n(...)["per_n"]`: analytic KL of best-of-N and the gold reward
      of the selected sample, one point per N (N = 1 is the SFT policy itself, KL 0).
    dpo_summary: `train_dpo(...)` summary; its "initial" evaluation (the reference = the SFT
      policy) is the first DPO point.
    dpo_records: the DPO run's metrics.jsonl records: every evaluation adds a point
      (`dpo_kl_key`: "eval/kl/full" is the exact per-position KL summed over the sample, the
      lowest-variance estimate; "eval/kl/k1" / "eval/kl/k3" are the sampled estimators).
    ppo_records: a PPO run's records ("kl/ref" against the monitored "monitor/gold").

  Returns:
    {"best-of-N": (kl, gold), "DPO": ..., "PPO": ...} for the methods given (empty ones left out).
  """
  out: dict[str, Series] = {}
  if best_of_n_rows:
    out["best-of-N"] = (np.asarray([r["kl/analytic"] for r in best_of_n_rows], np.float64),
                        np.asarray([r["gold/best_mean"] for r in best_of_n_rows], np.float64))
  dpo = []
  if dpo_summary is not None and _finite(dpo_summary.get("initial", {}).get(dpo_kl_key)):
    dpo.append({**dpo_summary["initial"], "step": 0})
  dpo += [r for r in dpo_records if dpo_kl_key in r]
  kl, gold = metric_series(dpo, "eval/gold/total", dpo_kl_key)
  if kl.size:
    out["DPO"] = (kl, gold)
  kl, gold = metric_series(ppo_records, "monitor/gold", "kl/ref")
  if kl.size:
    out["PPO"] = (kl, gold)
  return out


def plot_rollout_tokens(inspection: Any, rows: Sequence[int], path: PathLike,
                        max_tokens: Optional[int] = None) -> pathlib.Path:
  """One figure row per rollout row, three panels each, against the response tokens:

    log-probs     policy log pi(y_t) and reference log pi_ref(y_t)
    KL / reward   per-token k1 = log pi - log pi_ref, k3 = exp(-k1) - 1 + k1, and the KL-shaped
                  reward r_t = -beta * kl_t (+ the score at the last token)
    critic, GAE   values V(s_t), GAE advantages A_t and returns A_t + V(s_t)

  `inspection` is a `ppo_inspection.RolloutInspection`; tokens past the response's end are cut.
  """
  if not rows:
    raise ValueError("plot_rollout_tokens needs at least one row")
  fig = _figure((16.0, 3.4 * len(rows)))
  panels = (("log-probs", (("policy log pi", inspection.logp_BxS), ("reference log pi_ref", inspection.ref_logp_BxS))),
            ("KL and reward", (("k1", inspection.k1_BxS), ("k3", inspection.k3_BxS),
                               ("KL-shaped reward", inspection.rewards_BxS))),
            ("critic and GAE", (("value", inspection.values_BxS), ("advantage", inspection.advantages_BxS),
                                ("return", inspection.returns_BxS))))
  for i, b in enumerate(rows):
    n = int(np.sum(inspection.mask_BxS[b]))
    n = n if max_tokens is None else min(n, max_tokens)
    x = np.arange(n)
    for j, (title, curves) in enumerate(panels):
      ax = fig.add_subplot(len(rows), len(panels), i * len(panels) + j + 1)
      for label, arr in curves:
        ax.plot(x, np.asarray(arr[b][:n], np.float64), marker="o", markersize=3, label=label)
      ax.axhline(0.0, color="gray", linewidth=0.5)
      ax.set_xticks(x)
      ax.set_xticklabels(inspection.token_texts[b][:n], rotation=90, fontsize=7)
      ax.set_title(f"row {b}: {title}" + (f" (score {inspection.score_B[b]:.2f})" if j == 1 else ""), fontsize=9)
      ax.legend(fontsize=7)
  return _save(fig, path)


def plot_matrix(matrix_RxR: npt.ArrayLike, labels: Sequence[str], path: PathLike, title: str = "",
                vmin: float = -1.0, vmax: float = 1.0) -> pathlib.Path:
  """A square heat map with every cell's value written in it (NaN cells left blank)."""
  m = np.asarray(matrix_RxR, np.float64)
  if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
    raise ValueError(f"plot_matrix needs a square matrix with one label per row, got {m.shape} and "
                     f"{len(labels)} labels")
  fig = _figure((1.2 + 0.9 * len(labels), 0.9 + 0.8 * len(labels)))
  ax = fig.add_subplot(1, 1, 1)
  image = ax.imshow(np.ma.masked_invalid(m), vmin=vmin, vmax=vmax, cmap="RdBu")
  fig.colorbar(image, ax=ax)
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=45, ha="right")
  ax.set_yticks(range(len(labels)))
  ax.set_yticklabels(labels)
  for (r, c), v in np.ndenumerate(m):
    if np.isfinite(v):
      ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def plot_reliability_comparison(margin_B: npt.ArrayLike, calibrations: Mapping[str, Any], path: PathLike,
                                num_bins: int = 10) -> dict[str, calibration_lib.ReliabilityDiagram]:
  """Reliability diagrams of P(chosen preferred) on the symmetrised pairs, raw and per calibration map.

  Raw probabilities are sigmoid(margin); a map's are map(margin) (`reward_model_eval`). Each
  panel's title gives its ECE. Returns the diagrams by name ("raw", then the maps' names).
  """
  x, y = reward_model_eval.symmetrize(margin_B)
  named = {"raw": None, **dict(calibrations)}
  fig = _figure((4.2 * len(named), 4.2))
  diagrams = {}
  for k, (name, cal) in enumerate(named.items()):
    d = calibration_lib.reliability_diagram(reward_model_eval.pairwise_probability(x, cal), y, num_bins=num_bins)
    diagrams[name] = d
    keep = d.count > 0
    ax = fig.add_subplot(1, len(named), k + 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray")
    ax.plot(d.confidence[keep], d.frequency[keep], marker="o")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(chosen preferred)")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"{name}: ECE = {d.ece:.3f}")
  _save(fig, path)
  return diagrams
