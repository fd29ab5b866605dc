"""Tests for rlhf_jax/serving/cache.py: LRU order, key separation, hit counting."""
import hashlib
import threading

import pytest

from rlhf_jax.serving import cache as cache_lib


def test_cache_key_is_sha256_of_length_prefixed_parts():
  expected = hashlib.sha256()
  for part in ("v1", "p", "r"):
    expected.update(len(part).to_bytes(8, "little") + part.encode())
  assert cache_lib.cache_key("v1", "p", "r") == expected.digest()
  # Boundaries matter: no two distinct triples collide by concatenation.
  assert cache_lib.cache_key("v", "ab", "c") != cache_lib.cache_key("v", "a", "bc")
  assert cache_lib.cache_key("v1", "p", "r") != cache_lib.cache_key("v2", "p", "r")


def test_lru_evicts_the_least_recently_used_entry():
  c = cache_lib.ScoreCache(max_entries=2)
  c.put("v", "p", "a", {"score": 1.0})
  c.put("v", "p", "b", {"score": 2.0})
  assert c.get("v", "p", "a") == {"score": 1.0}  # "a" is now the most recent
  c.put("v", "p", "c", {"score": 3.0})  # evicts "b"
  assert c.get("v", "p", "b") is None
  assert c.get("v", "p", "a") == {"score": 1.0} and c.get("v", "p", "c") == {"score": 3.0}
  assert len(c) == 2 and c.evictions == 1
  c.put("v", "p", "a", {"score": 9.0})  # overwrite keeps the size
  assert len(c) == 2 and c.get("v", "p", "a") == {"score": 9.0}


def test_hits_misses_and_hit_rate():
  c = cache_lib.ScoreCache(max_entries=10)
  assert c.hit_rate == 0.0
  c.put("v1", "p", "r", {"score": 0.5, "std": 0.1})
  assert c.get("v1", "p", "r") == {"score": 0.5, "std": 0.1}
  assert c.get("v2", "p", "r") is None  # another version never reads this version's scores
  assert c.get("v1", "p", "r2") is None
  assert (c.hits, c.misses) == (1, 2)
  assert c.hit_rate == pytest.approx(1 / 3)


def test_returned_values_are_copies():
  c = cache_lib.ScoreCache(max_entries=1)
  value = {"score": 1.0}
  c.put("v", "p", "r", value)
  value["score"] = 5.0
  got = c.get("v", "p", "r")
  got["score"] = 7.0
  assert c.get("v", "p", "r") == {"score": 1.0}


def test_zero_size_disables_and_negative_is_rejected():
  c = cache_lib.ScoreCache(max_entries=0)
  c.put("v", "p", "r", {"score": 1.0})
  assert c.get("v", "p", "r") is None and len(c) == 0
  with pytest.raises(ValueError, match="max_entries must be >= 0"):
    cache_lib.ScoreCache(max_entries=-1)


def test_concurrent_puts_keep_the_bound():
  c = cache_lib.ScoreCache(max_entries=50)

  def writer(t):
    for i in range(500):
      c.put("v", str(t), str(i), {"score": float(i)})
      c.get("v", str(t), str(i))

  threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  # (A get may miss when other threads evicted the entry in between; the counts still add up.)
  assert len(c) == 50 and c.hits + c.misses == 2000 and c.evictions == 2000 - 50
