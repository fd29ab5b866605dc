"""Model registry: scorers by name and version, canary routing, promote / roll back, score stats.

Each model name has one *stable* version and at most one *canary* version that receives a
configured fraction of the traffic. Routing is deterministic: a request goes to the canary when

    u(seed, name, routing_key) < canary_fraction,   u = first 64 bits of a sha256, in [0, 1)

so a given routing key (the client's request id, or one key per trainer step) always reaches the
same version, raising the fraction only moves keys from stable to canary, and the realised share
of distinct keys converges to the fraction. Requests that name a version explicitly bypass routing.

Every served score is recorded per version (running mean / std over all scores, quantiles over a
window of recent ones), so the two versions' distributions can be compared (`compare`), including
the two-sample Kolmogorov-Smirnov (KS) statistic  D = sup_x |F_stable(x) - F_canary(x)|.
Promote makes the canary the stable version; roll back stops routing to it; both keep the
versions loaded, so either can be undone without a restart.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import threading
import time
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from rlhf_jax.serving import errors
from rlhf_jax.serving.scorer import Scorer

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def route_unit(seed: int, name: str, routing_key: str) -> float:
  """Deterministic pseudo-uniform number in [0, 1) for a (seed, model name, routing key)."""
  digest = hashlib.sha256(f"{seed}\0{name}\0{routing_key}".encode("utf-8", "surrogatepass"))
  return int.from_bytes(digest.digest()[:8], "little") / 2.0**64


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
  """Two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)| of empirical CDFs.

  Example: ks_statistic([0, 1], [2, 3]) == 1.0; ks_statistic(x, x) == 0.0.
  """
  a_N = np.sort(np.asarray(a, np.float64))
  b_M = np.sort(np.asarray(b, np.float64))
  if a_N.size == 0 or b_M.size == 0:
    raise ValueError(f"ks_statistic needs two non-empty samples, got sizes {a_N.size}, {b_M.size}")
  # Both empirical CDFs only jump at sample points, so the supremum is attained at one of them.
  x = np.concatenate([a_N, b_M])
  cdf_a = np.searchsorted(a_N, x, side="right") / a_N.size
  cdf_b = np.searchsorted(b_M, x, side="right") / b_M.size
  return float(np.max(np.abs(cdf_a - cdf_b)))


class VersionStats:
  """Scores served by one version: exact count / mean / std, quantiles over a recent window."""

  def __init__(self, window: int):
    self._recent: collections.deque[float] = collections.deque(maxlen=window)
    self.count = 0
    self._mean = 0.0
    self._m2 = 0.0  # Welford's running sum of squared deviations
    self._lock = threading.Lock()

  def add(self, scores: Sequence[float]) -> None:
    with self._lock:
      for s in scores:
        s = float(s)
        self.count += 1
        delta = s - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (s - self._mean)
        self._recent.append(s)

  def recent(self) -> np.ndarray:
    with self._lock:
      return np.asarray(self._recent, np.float64)

  def summary(self) -> dict[str, Any]:
    """count, mean, std (population, over all scores) and quantiles / min / max of the window."""
    recent = self.recent()
    out: dict[str, Any] = {"count": self.count, "window": int(recent.size)}
    if self.count:
      out["mean"] = self._mean
      out["std"] = math.sqrt(self._m2 / self.count)
    if recent.size:
      out["min"], out["max"] = float(recent.min()), float(recent.max())
      out["quantiles"] = {f"p{round(q * 100):02d}": float(v)
                          for q, v in zip(QUANTILES, np.quantile(recent, QUANTILES))}
    return out


@dataclasses.dataclass
class ModelEntry:
  """One loaded version of a model."""

  scorer: Scorer
  stats: VersionStats
  loaded_at: float

  @property
  def name(self) -> str:
    return self.scorer.name

  @property
  def version(self) -> str:
    return self.scorer.version


@dataclasses.dataclass
class _Model:
  versions: dict[str, ModelEntry]
  stable: str
  canary: Optional[str] = None
  canary_fraction: float = 0.0


def _check_fraction(fraction: float) -> float:
  fraction = float(fraction)
  if not 0.0 <= fraction <= 1.0:
    raise errors.InvalidRequest(f"canary fraction must lie in [0, 1], got {fraction}")
  return fraction


class ModelRegistry:
  """Thread-safe registry of loaded scorers (see the module docstring)."""

  def __init__(self, *, seed: int = 0, stats_window: int = 10_000):
    self.seed = seed
    self._stats_window = stats_window
    self._models: dict[str, _Model] = {}
    self._lock = threading.RLock()

  def add(self, scorer: Scorer, *, role: str = "standby",
          canary_fraction: float = 0.0) -> ModelEntry:
    """Loads a version next to the existing ones.

    Args:
      scorer: the version to add; the first version of a name always becomes stable.
      role: "stable" (serve it to all unpinned traffic now), "canary" (route `canary_fraction`
        of the traffic to it) or "standby" (only reachable by pinning its version).
      canary_fraction: share of unpinned traffic for role="canary".

    Raises:
      Conflict: when this name already has this version.
    """
    if role not in ("stable", "canary", "standby"):
      raise errors.InvalidRequest(f"role must be 'stable', 'canary' or 'standby', got {role!r}")
    canary_fraction = _check_fraction(canary_fraction)  # before anything changes
    for field in ("name", "version"):
      value = getattr(scorer, field, None)
      if not isinstance(value, str) or not value:
        raise errors.InvalidRequest(f"scorer.{field} must be a non-empty string, got {value!r}")
    entry = ModelEntry(scorer, VersionStats(self._stats_window), time.time())
    with self._lock:
      model = self._models.get(scorer.name)
      if model is None:
        if role == "canary":
          raise errors.Conflict(f"model {scorer.name!r} has no stable version to canary against")
        self._models[scorer.name] = _Model({scorer.version: entry}, stable=scorer.version)
        return entry
      if scorer.version in model.versions:
        raise errors.Conflict(f"model {scorer.name!r} already has version {scorer.version!r}")
      model.versions[scorer.version] = entry
      if role == "stable":
        model.stable = scorer.version
        if model.canary == scorer.version:
          model.canary, model.canary_fraction = None, 0.0
      elif role == "canary":
        self.set_canary(scorer.name, scorer.version, canary_fraction)
      return entry

  def _model(self, name: str) -> _Model:
    model = self._models.get(name)
    if model is None:
      raise errors.UnknownModel(f"unknown model {name!r}; loaded models: {sorted(self._models)}")
    return model

  def get(self, name: str, version: Optional[str] = None) -> ModelEntry:
    """The named version, or the stable one when version is None."""
    with self._lock:
      model = self._model(name)
      version = model.stable if version is None else version
      entry = model.versions.get(version)
      if entry is None:
        raise errors.UnknownModel(f"model {name!r} has no version {version!r}; loaded versions: "
                                  f"{sorted(model.versions)}")
      return entry

  def route(self, name: str, version: Optional[str] = None, routing_key: str = "") -> ModelEntry:
    """The version a request goes to: the pinned one, else canary or stable by routing key."""
    with self._lock:
      if version is not None:
        return self.get(name, version)
      model = self._model(name)
      if model.canary is not None and route_unit(self.seed, name,
                                                 routing_key) < model.canary_fraction:
        return model.versions[model.canary]
      return model.versions[model.stable]

  def set_canary(self, name: str, version: str, fraction: float) -> None:
    """Routes `fraction` of the unpinned traffic of `name` to `version`."""
    fraction = _check_fraction(fraction)
    with self._lock:
      model = self._model(name)
      self.get(name, version)
      if version == model.stable:
        raise errors.Conflict(f"version {version!r} is already the stable version of {name!r}")
      model.canary, model.canary_fraction = version, fraction

  def promote(self, name: str) -> str:
    """Makes the canary the stable version (all traffic); returns the previous stable version."""
    with self._lock:
      model = self._model(name)
      if model.canary is None:
        raise errors.Conflict(f"model {name!r} has no canary to promote")
      previous = model.stable
      model.stable, model.canary, model.canary_fraction = model.canary, None, 0.0
      return previous

  def rollback(self, name: str) -> str:
    """Stops routing to the canary (it stays loaded, pinnable); returns its version."""
    with self._lock:
      model = self._model(name)
      if model.canary is None:
        raise errors.Conflict(f"model {name!r} has no canary to roll back")
      canary = model.canary
      model.canary, model.canary_fraction = None, 0.0
      return canary

  def set_stable(self, name: str, version: str) -> None:
    """Serves `version` to all unpinned traffic (e.g. back to a version replaced by promote)."""
    with self._lock:
      model = self._model(name)
      self.get(name, version)
      model.stable = version
      if model.canary == version:
        model.canary, model.canary_fraction = None, 0.0

  def remove(self, name: str, version: str) -> ModelEntry:
    """Unloads a version that receives no unpinned traffic."""
    with self._lock:
      model = self._model(name)
      entry = self.get(name, version)
      if version in (model.stable, model.canary):
        role = "stable" if version == model.stable else "canary"
        raise errors.Conflict(f"version {version!r} is the {role} version of {name!r}; "
                              "promote, roll back or replace it first")
      del model.versions[version]
      return entry

  def entries(self) -> Iterator[ModelEntry]:
    with self._lock:
      items = [e for m in self._models.values() for e in m.versions.values()]
    return iter(items)

  def describe(self) -> list[dict[str, Any]]:
    """JSON-ready list of models: stable, canary, fraction and each version's limits."""
    with self._lock:
      out = []
      for name, model in sorted(self._models.items()):
        out.append({
            "name": name, "stable": model.stable, "canary": model.canary,
            "canary_fraction": model.canary_fraction,
            "versions": [{"version": v, "max_batch_size": e.scorer.max_batch_size,
                          "max_seq_len": e.scorer.max_seq_len, "loaded_at": e.loaded_at,
                          "scorer": type(e.scorer).__name__}
                         for v, e in model.versions.items()]})
      return out

  def compare(self, name: str, version_a: Optional[str] = None,
              version_b: Optional[str] = None) -> dict[str, Any]:
    """Score distributions of two versions (default: stable vs canary) and their KS statistic."""
    with self._lock:
      model = self._model(name)
      version_a = model.stable if version_a is None else version_a
      version_b = model.canary if version_b is None else version_b
      if version_b is None:
        raise errors.InvalidRequest(f"model {name!r} has no canary; name the second version to "
                                    "compare")
      entry_a, entry_b = self.get(name, version_a), self.get(name, version_b)
    a, b = entry_a.stats.recent(), entry_b.stats.recent()
    out = {"model": name, "a": {"version": version_a, **entry_a.stats.summary()},
           "b": {"version": version_b, **entry_b.stats.summary()}}
    out["ks_statistic"] = ks_statistic(a, b) if a.size and b.size else None
    if "mean" in out["a"] and "mean" in out["b"]:
      out["mean_difference"] = out["b"]["mean"] - out["a"]["mean"]
    return out
