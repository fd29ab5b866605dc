"""PNG figures of an evaluation-suite report (`suite.run_evaluation`): one figure per section.

  win_rates.png     each policy's win rate against the reference per judge, with its interval
  ratings.png       Bradley-Terry strengths (Elo scale, reference = 0) per judge
  reward_vs_kl.png  on-policy gold reward against KL(pi || pi_ref) (k3), one point per player
  off_policy.png    each player's on-policy gold mean next to its IS / SNIS estimates
  pass_at_k.png     pass@k against k per player (arithmetic)

Drawn with matplotlib's object API on an Agg canvas (as `plots.py`), never through pyplot.
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping, Optional

import numpy as np

from rlhf_jax.evaluation import plots


def _figure(figsize: tuple[float, float]):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig


def grouped_bars(groups: Mapping[str, Mapping[str, float]], path: Any, ylabel: str, title: str, *,
                 errors: Optional[Mapping[str, Mapping[str, tuple[float, float]]]] = None,
                 hline: Optional[float] = None) -> str:
  """One bar per (series, category): groups = {series: {category: value}}; errors give (low, high)."""
  categories = list(dict.fromkeys(c for g in groups.values() for c in g))
  fig = _figure((max(5.0, 1.2 * len(categories) * max(len(groups), 1)), 4.0))
  ax = fig.add_subplot(1, 1, 1)
  width = 0.8 / max(len(groups), 1)
  x = np.arange(len(categories), dtype=np.float64)
  for i, (series, values) in enumerate(groups.items()):
    y = np.array([values.get(c, np.nan) if values.get(c) is not None else np.nan for c in categories], np.float64)
    yerr = None
    if errors and series in errors:
      lo_hi = [errors[series].get(c, (v, v)) for c, v in zip(categories, y)]
      yerr = np.array([[max(v - lo, 0.0) for (lo, _), v in zip(lo_hi, y)],
                       [max(hi - v, 0.0) for (_, hi), v in zip(lo_hi, y)]])
    ax.bar(x + (i - (len(groups) - 1) / 2) * width, y, width, yerr=yerr, capsize=3, label=series)
  if hline is not None:
    ax.axhline(hline, color="gray", linestyle="--", linewidth=1)
  ax.set_xticks(x)
  ax.set_xticklabels([c if len(c) <= 24 else c[:21] + "..." for c in categories], rotation=15, fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format="png", dpi=100)
  return str(path)


def plot_report(report: Mapping[str, Any], out_dir: Any) -> list[str]:
  """Writes the figures of the sections present in `report`; returns their paths."""
  out_dir = pathlib.Path(str(out_dir))
  paths = []
  wr = report["win_rates"]
  if any(wr.values()):
    paths.append(grouped_bars(
        {j: {p: v["win_rate"] for p, v in rows.items()} for j, rows in wr.items()}, out_dir / "win_rates.png",
        "win rate vs reference", f"win rates ({report['reference']})", hline=0.5,
        errors={j: {p: (v["ci_low"], v["ci_high"]) for p, v in rows.items()} for j, rows in wr.items()}))
  paths.append(grouped_bars({j: r["bradley_terry"] for j, r in report["ratings"].items()}, out_dir / "ratings.png",
                            "Bradley-Terry strength (Elo scale)", "ratings (reference = 0)", hline=0.0))
  kl = report["kl_to_reference"]
  if "skipped" not in kl:
    series = {name: ([kl[name]["k3"]], [report["on_policy"][name]["gold"]["mean"]]) for name in kl}
    paths.append(str(plots.plot_curves(series, out_dir / "reward_vs_kl.png", "KL(pi || pi_ref), k3 (nats)",
                                       "gold reward (on-policy mean)", title="reward vs KL")))
  ope = report["off_policy"]
  if "skipped" not in ope:
    groups = {key: {name: row[key] for name, row in ope.items()}
              for key in ("on_policy", "ordinary", "self_normalized")}
    paths.append(grouped_bars(groups, out_dir / "off_policy.png", "gold reward",
                              "on-policy mean vs importance-sampling estimates from reference samples"))
  arith = report.get("arithmetic")
  if arith:
    series = {}
    for name, row in arith.items():
      ks = sorted(int(k.split("@")[1]) for k in row if k.startswith("pass@"))
      if ks:
        series[name] = (np.array(ks, np.float64), np.array([row[f"pass@{k}"] for k in ks]))
    if series:
      paths.append(str(plots.plot_curves(series, out_dir / "pass_at_k.png", "k", "pass@k (unbiased)",
                                         title="arithmetic", logx=True)))
  return paths
