"""PNG plots for evaluation reports: reliability diagrams and simple curves.

Figures are drawn with matplotlib's object API on an Agg canvas, never through pyplot, so no
display is needed and no global backend or figure state is touched. matplotlib is imported on
first use: it takes about a second, which `import rlhf_jax.evaluation` should not pay.
"""
from __future__ import annotations

import os
import pathlib
from typing import Mapping, Union

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import calibration

Series = Union[npt.ArrayLike, tuple[npt.ArrayLike, npt.ArrayLike]]


def moving_average(values: npt.ArrayLike, window: int) -> np.ndarray:
  """Means of each `window` consecutive values ("valid" part only: len - window + 1 of them).

  Noisy per-iteration curves (proxy and gold reward against KL) read better smoothed; smooth x and y
  with the same window so the points stay paired.
  """
  values = np.asarray(values, np.float64)
  window = max(1, min(int(window), values.size))
  return np.convolve(values, np.ones(window) / window, mode="valid")


def _new_figure(figsize: tuple[float, float]):
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: Union[str, os.PathLike]) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, format="png", dpi=100)
  return path


def plot_reliability_diagram(probs_B: npt.ArrayLike, labels_B: npt.ArrayLike,
                             path: Union[str, os.PathLike], num_bins: int = 10,
                             strategy: str = "uniform", title: str | None = None
                             ) -> calibration.ReliabilityDiagram:
  """Writes a reliability diagram (observed frequency vs mean confidence per bin) as a PNG.

  Marker area grows with the bin count; the diagonal is perfect calibration, and the title
  reports the expected calibration error (ECE). Returns the plotted `ReliabilityDiagram`.
  """
  diagram = calibration.reliability_diagram(probs_B, labels_B, num_bins=num_bins, strategy=strategy)
  keep = diagram.count > 0
  fig = _new_figure((4.5, 4.5))
  ax = fig.add_subplot(1, 1, 1)
  ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
  sizes = 20.0 + 200.0 * diagram.count[keep] / diagram.count.max()
  ax.plot(diagram.confidence[keep], diagram.frequency[keep], color="C0")
  ax.scatter(diagram.confidence[keep], diagram.frequency[keep], s=sizes, color="C0",
             label=f"{strategy} bins")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("mean predicted probability")
  ax.set_ylabel("observed frequency")
  ax.set_title(f"{title + ': ' if title else ''}ECE = {diagram.ece:.3f}")
  ax.legend(loc="upper left")
  fig.tight_layout()
  _save(fig, path)
  return diagram


def plot_curves(series: Mapping[str, Series], path: Union[str, os.PathLike], xlabel: str,
                ylabel: str, title: str | None = None, logx: bool = False) -> pathlib.Path:
  """Writes one line per named series as a PNG and returns the path.

  A series is either y values (plotted against 0, 1, 2, ...) or an (x, y) pair, e.g.
  plot_curves({"best-of-N": (kl, reward)}, "out.png", "KL (nats)", "gold reward").
  """
  if not series:
    raise ValueError("plot_curves needs at least one series")
  fig = _new_figure((6.0, 4.0))
  ax = fig.add_subplot(1, 1, 1)
  for name, values in series.items():
    if isinstance(values, tuple) and len(values) == 2:
      x, y = np.asarray(values[0], np.float64), np.asarray(values[1], np.float64)
    else:
      y = np.asarray(values, np.float64)
      x = np.arange(y.size, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
      raise ValueError(f"series {name!r}: x and y must be equal-length 1-D, got {x.shape} and "
                       f"{y.shape}")
    ax.plot(x, y, marker="o" if y.size <= 30 else None, label=name)
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  return _save(fig, path)

