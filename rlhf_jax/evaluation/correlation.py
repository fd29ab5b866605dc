"""Rank and correlation statistics in float64 NumPy: average ranks, Pearson, Spearman, Kendall.

Shape letter: B observations (e.g. one per evaluated response).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt


def as_float_vector(name: str, values: npt.ArrayLike) -> np.ndarray:
  """Converts to a finite 1-D float64 array, raising ValueError that names `name` otherwise."""
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    bad = int(np.flatnonzero(~np.isfinite(arr))[0])
    raise ValueError(f"{name} must be finite; entry {bad} is {arr[bad]}")
  return arr


def _paired(x_B: npt.ArrayLike, y_B: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  x, y = as_float_vector("x_B", x_B), as_float_vector("y_B", y_B)
  if x.size != y.size:
    raise ValueError(f"x_B and y_B must have equal lengths, got {x.size} and {y.size}")
  if x.size < 2:
    raise ValueError(f"correlations need at least 2 observations, got {x.size}")
  return x, y


def average_ranks(x_B: npt.ArrayLike) -> np.ndarray:
  """1-based ranks where tied values share the mean of the ranks they span.

  Example: average_ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1].
  """
  x = as_float_vector("x_B", x_B)
  order = np.argsort(x, kind="stable")
  xs = x[order]
  starts_mask = np.concatenate([[True], xs[1:] != xs[:-1]]) if x.size else np.zeros(0, bool)
  group = np.cumsum(starts_mask) - 1
  starts = np.flatnonzero(starts_mask)
  ends = np.append(starts[1:], x.size)  # exclusive
  ranks = np.empty(x.size)
  ranks[order] = ((starts + 1 + ends) / 2.0)[group]  # mean of ranks start+1 .. end
  return ranks


def pearson(x_B: npt.ArrayLike, y_B: npt.ArrayLike) -> float:
  """Pearson correlation sum((x - x̄)(y - ȳ)) / sqrt(sum (x - x̄)^2 sum (y - ȳ)^2).

  Returns NaN when either input is constant (the correlation is undefined).
  """
  x, y = _paired(x_B, y_B)
  dx, dy = x - x.mean(), y - y.mean()
  denom = np.sqrt(np.dot(dx, dx) * np.dot(dy, dy))
  return float("nan") if denom == 0 else float(np.clip(np.dot(dx, dy) / denom, -1.0, 1.0))


def spearman(x_B: npt.ArrayLike, y_B: npt.ArrayLike) -> float:
  """Spearman's rank correlation (Spearman 1904): Pearson correlation of the average ranks.

  Ties get average ranks, which is the usual tie correction. NaN when an input is constant.
  """
  x, y = _paired(x_B, y_B)
  return pearson(average_ranks(x), average_ranks(y))


def kendall_tau(x_B: npt.ArrayLike, y_B: npt.ArrayLike) -> float:
  """Kendall's tau-b (Kendall 1945), which corrects for ties in either input.

    tau_b = (n_c - n_d) / sqrt((n_0 - t_x) (n_0 - t_y)),

  over the n_0 = B(B-1)/2 pairs: n_c concordant, n_d discordant, t_x (t_y) pairs tied in x (y).
  O(B^2) time and O(B) memory. NaN when an input is constant.
  """
  x, y = _paired(x_B, y_B)
  s = tied_x = tied_y = 0.0
  for i in range(x.size - 1):
    sx, sy = np.sign(x[i + 1:] - x[i]), np.sign(y[i + 1:] - y[i])
    s += float(np.dot(sx, sy))
    tied_x += float(np.sum(sx == 0))
    tied_y += float(np.sum(sy == 0))
  n0 = x.size * (x.size - 1) / 2.0
  denom = np.sqrt((n0 - tied_x) * (n0 - tied_y))
  return float("nan") if denom == 0 else float(s / denom)
