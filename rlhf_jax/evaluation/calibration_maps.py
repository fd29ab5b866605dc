"""Calibration maps fitted on a calibration split and applied to new scores (float64 NumPy).

  * Platt scaling (Platt 1999): p = sigmoid(a * margin + b), a 1-D logistic regression on the
    reward margin, fitted by Newton's method (iteratively reweighted least squares, IRLS).
  * Isotonic regression (Zadrozny & Elkan 2002): the best monotone step function in weighted
    least squares, fitted with the pool-adjacent-violators (PAV) algorithm (Ayer et al. 1955)
    and linearly interpolated between fitted points for new inputs.

Both maps are frozen dataclasses of plain floats with `to_dict` / `from_dict`, so they can be
saved next to a reward-model checkpoint as JSON and applied later with `__call__`.

Shape letter: B calibration examples.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import classification
from rlhf_jax.evaluation import correlation


def _sigmoid(z: np.ndarray) -> np.ndarray:
  # exp of a non-positive number only, so no overflow for large |z|.
  e = np.exp(-np.abs(z))
  return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclasses.dataclass(frozen=True)
class PlattScaling:
  """p = sigmoid(a * x + b)."""
  a: float
  b: float

  def __call__(self, x: npt.ArrayLike) -> np.ndarray:
    return _sigmoid(self.a * np.asarray(x, np.float64) + self.b)

  def to_dict(self) -> dict[str, Any]:
    return {"kind": "platt", "a": float(self.a), "b": float(self.b)}

  @classmethod
  def from_dict(cls, state: Mapping[str, Any]) -> "PlattScaling":
    if state.get("kind") != "platt" or not {"a", "b"} <= set(state):
      raise ValueError(f"not a Platt scaling state (need kind='platt', a, b): {dict(state)!r}")
    return cls(a=float(state["a"]), b=float(state["b"]))


def fit_platt(margins_B: npt.ArrayLike, labels_B: npt.ArrayLike, *, l2: float = 1e-6,
              target_smoothing: bool = False, max_iters: int = 100,
              tol: float = 1e-12) -> PlattScaling:
  """Fits Platt scaling by Newton's method on the (optionally smoothed) log-loss.

  Minimises  -sum_b [t_b log p_b + (1 - t_b) log(1 - p_b)] + (l2 / 2) a^2,  p_b = sigmoid(a x_b + b)
  with gradient X^T (p - t) and Hessian X^T diag(p (1 - p)) X for X = [x, 1], halving a step
  whenever it would not decrease the objective. The small `l2` on the slope keeps the solution
  finite for perfectly separated data. `target_smoothing` replaces hard targets with Platt's
  (N+ + 1) / (N+ + 2) and 1 / (N- + 2), another guard against over-confidence on small splits.
  Soft labels in [0, 1] are accepted as targets.
  """
  x = correlation.as_float_vector("margins_B", margins_B)
  t = classification.check_labels(labels_B, x.size, soft=True)
  if x.size == 0:
    raise ValueError("fit_platt needs at least one example")
  if target_smoothing:
    n_pos, n_neg = float(t.sum()), float(x.size - t.sum())
    t = t * (n_pos + 1.0) / (n_pos + 2.0) + (1.0 - t) / (n_neg + 2.0)
  design_Bx2 = np.stack([x, np.ones_like(x)], axis=1)
  ridge = np.array([l2, 0.0])

  def objective(w: np.ndarray) -> float:
    z = design_Bx2 @ w
    # log(1 + e^z) - t z, written stably.
    return float(np.sum(np.logaddexp(0.0, z) - t * z) + 0.5 * l2 * w[0] ** 2)

  w = np.zeros(2)
  value = objective(w)
  for _ in range(max_iters):
    p = _sigmoid(design_Bx2 @ w)
    grad = design_Bx2.T @ (p - t) + ridge * w
    hess = ((design_Bx2 * (p * (1.0 - p))[:, None]).T @ design_Bx2 + np.diag(ridge)
            + 1e-12 * np.eye(2))
    step = np.linalg.solve(hess, grad)
    scale = 1.0
    while scale > 1e-10:
      candidate = w - scale * step
      new_value = objective(candidate)
      if new_value <= value:
        break
      scale *= 0.5
    else:
      break  # no decrease possible: at the optimum up to rounding
    w, value = candidate, new_value
    if np.max(np.abs(scale * step)) < tol * (1.0 + np.max(np.abs(w))):
      break
  return PlattScaling(a=float(w[0]), b=float(w[1]))


@dataclasses.dataclass(frozen=True)
class IsotonicRegression:
  """A monotone piecewise-linear map through the knots, constant beyond the first and last."""
  x_knots: tuple[float, ...]  # strictly increasing
  y_knots: tuple[float, ...]  # monotone in the fitted direction

  def __call__(self, x: npt.ArrayLike) -> np.ndarray:
    return np.interp(np.asarray(x, np.float64), np.asarray(self.x_knots), np.asarray(self.y_knots))

  def to_dict(self) -> dict[str, Any]:
    return {"kind": "isotonic", "x_knots": list(self.x_knots), "y_knots": list(self.y_knots)}

  @classmethod
  def from_dict(cls, state: Mapping[str, Any]) -> "IsotonicRegression":
    if state.get("kind") != "isotonic" or not {"x_knots", "y_knots"} <= set(state):
      raise ValueError("not an isotonic state (need kind='isotonic', x_knots, y_knots): "
                       f"{dict(state)!r}")
    xk, yk = np.asarray(state["x_knots"], np.float64), np.asarray(state["y_knots"], np.float64)
    if xk.ndim != 1 or xk.shape != yk.shape or xk.size == 0 or np.any(np.diff(xk) <= 0):
      raise ValueError("isotonic state needs equal-length, non-empty knots with strictly "
                       "increasing x_knots")
    return cls(tuple(xk.tolist()), tuple(yk.tolist()))


def pool_adjacent_violators(y_B: np.ndarray, w_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Non-decreasing weighted least-squares fit of a sequence (PAV); returns (values, block sizes).

  Scans left to right keeping a stack of blocks (weighted mean, weight, length) and merges the
  last two blocks while their means decrease. O(B) amortised.
  """
  means, weights, sizes = [], [], []
  for value, weight in zip(y_B.tolist(), w_B.tolist()):
    means.append(value), weights.append(weight), sizes.append(1)
    while len(means) > 1 and means[-2] > means[-1]:
      w = weights[-2] + weights[-1]
      means[-2] = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w
      weights[-2], sizes[-2] = w, sizes[-2] + sizes[-1]
      del means[-1], weights[-1], sizes[-1]
  return np.asarray(means), np.asarray(sizes)


def fit_isotonic(x_B: npt.ArrayLike, y_B: npt.ArrayLike, weights_B: npt.ArrayLike | None = None,
                 increasing: bool = True) -> IsotonicRegression:
  """Fits isotonic regression of y on x: min sum_b w_b (y_b - f(x_b))^2 over monotone f.

  Equal x values are pooled first (their weighted mean y), so f is a function of x. Each PAV
  block becomes one knot per distinct end of its x range, which makes `__call__` reproduce the
  fitted values at training inputs, interpolate linearly between blocks and stay constant beyond
  the data. For calibration, x is a score or probability and y the 0/1 label.
  """
  x = correlation.as_float_vector("x_B", x_B)
  y = correlation.as_float_vector("y_B", y_B)
  w = np.ones_like(x) if weights_B is None else correlation.as_float_vector("weights_B", weights_B)
  if not x.size == y.size == w.size or x.size == 0:
    raise ValueError(f"x_B, y_B and weights_B need equal, non-zero lengths, got {x.size}, "
                     f"{y.size}, {w.size}")
  if np.any(w <= 0):
    raise ValueError(f"weights_B must be positive; entry {int(np.flatnonzero(w <= 0)[0])} is not")
  order = np.argsort(x, kind="stable")
  x, y, w = x[order], y[order], w[order]
  distinct_x, group = np.unique(x, return_inverse=True)
  gw = np.bincount(group, w)
  gy = np.bincount(group, w * y) / gw
  sign = 1.0 if increasing else -1.0
  values, sizes = pool_adjacent_violators(sign * gy, gw)
  xk, yk = [], []
  start = 0
  for value, size in zip(values.tolist(), sizes.tolist()):
    lo, hi = distinct_x[start], distinct_x[start + size - 1]
    xk.append(float(lo)), yk.append(sign * value)
    if hi > lo:
      xk.append(float(hi)), yk.append(sign * value)
    start += size
  return IsotonicRegression(tuple(xk), tuple(yk))
