"""Bounded least-recently-used (LRU) cache of scored items.

Keys are the sha256 of (model version, prompt, response), length-prefixed so that no two distinct
triples share a key, and the version is the checkpoint's content hash: a new checkpoint never
reads an old checkpoint's scores, and two names serving the same checkpoint share entries.
The cache stores only successful, finite outputs; failures are never cached.
"""
from __future__ import annotations

import collections
import hashlib
import threading
from typing import Mapping, Optional


def cache_key(version: str, prompt: str, response: str) -> bytes:
  """sha256 digest of the length-prefixed UTF-8 (version, prompt, response)."""
  h = hashlib.sha256()
  for part in (version, prompt, response):
    data = part.encode("utf-8", "surrogatepass")
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)
  return h.digest()


class ScoreCache:
  """LRU map from cache_key to per-item outputs ({"score": float, ...}), with hit counting.

  Thread-safe. `max_entries=0` disables caching (every lookup misses, nothing is stored).

  Example:
    cache = ScoreCache(max_entries=2)
    cache.put("v1", "p", "r", {"score": 0.5})
    cache.get("v1", "p", "r")   # {"score": 0.5}; cache.hits == 1
    cache.get("v2", "p", "r")   # None;           cache.misses == 1
  """

  def __init__(self, max_entries: int):
    if max_entries < 0:
      raise ValueError(f"cache max_entries must be >= 0, got {max_entries}")
    self.max_entries = max_entries
    self._data: collections.OrderedDict[bytes, dict[str, float]] = collections.OrderedDict()
    self._lock = threading.Lock()
    self.hits = 0
    self.misses = 0
    self.evictions = 0

  def get(self, version: str, prompt: str, response: str) -> Optional[dict[str, float]]:
    """The cached outputs (a copy) or None; counts a hit or a miss."""
    key = cache_key(version, prompt, response)
    with self._lock:
      value = self._data.get(key)
      if value is None:
        self.misses += 1
        return None
      self._data.move_to_end(key)
      self.hits += 1
      return dict(value)

  def put(self, version: str, prompt: str, response: str, outputs: Mapping[str, float]) -> None:
    """Stores outputs, evicting the least recently used entry beyond max_entries."""
    if self.max_entries == 0:
      return
    key = cache_key(version, prompt, response)
    with self._lock:
      self._data[key] = dict(outputs)
      self._data.move_to_end(key)
      while len(self._data) > self.max_entries:
        self._data.popitem(last=False)
        self.evictions += 1

  def clear(self) -> None:
    with self._lock:
      self._data.clear()

  def __len__(self) -> int:
    return len(self._data)

  @property
  def hit_rate(self) -> float:
    """hits / (hits + misses) over the cache's lifetime; 0 before the first lookup."""
    lookups = self.hits + self.misses
    return self.hits / lookups if lookups else 0.0
