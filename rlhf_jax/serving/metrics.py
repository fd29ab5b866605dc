"""Prometheus metrics of one server, in a registry of its own (never the process-global default).

A private `CollectorRegistry` per app lets several servers (e.g. in tests) live in one process.
Names (all prefixed `rlhf_serving_`):

  requests_total{route,status}           HTTP requests by route template and status code
  errors_total{kind}                     failed requests by error kind (errors.py)
  items_total{model,version,source}      scored items, source = "cache" or "model"
  batch_size{model,version}              histogram of dynamic batch sizes
  batch_seconds{model,version}           histogram of time spent in the scorer per batch
  queue_depth{model,version}             items waiting in each version's queue
  request_latency_seconds                histogram of /v1/score latency (arrival to response)
  request_latency_quantile_seconds{quantile}  p50 / p99 over the last `latency_window` requests
  cache_hits_total, cache_misses_total   cache lookups; cache_hit_rate (lifetime), cache_entries
  score{model,version}                   histogram of served scores, per version
  canary_fraction{model}                 share of unpinned traffic routed to the canary
"""
from __future__ import annotations

import collections
import threading
from typing import Callable, Sequence

import numpy as np
import prometheus_client as prom

PREFIX = "rlhf_serving_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SCORE_BUCKETS = tuple(float(x) for x in np.arange(-5.0, 5.01, 0.5))
LATENCY_QUANTILES = (0.5, 0.99)


class ServingMetrics:
  """All metrics of one server; `render()` gives the Prometheus text exposition."""

  def __init__(self, latency_window: int = 10_000):
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.requests = prom.Counter(PREFIX + "requests", "HTTP requests by route and status code.",
                                 ["route", "status"], registry=r)
    self.errors = prom.Counter(PREFIX + "errors", "Failed requests by error kind.", ["kind"],
                               registry=r)
    self.items = prom.Counter(PREFIX + "items", "Scored items by model, version and source "
                              "(cache or model).", ["model", "version", "source"], registry=r)
    self.batch_size = prom.Histogram(PREFIX + "batch_size", "Items per dynamic batch.",
                                     ["model", "version"], buckets=BATCH_BUCKETS, registry=r)
    self.batch_seconds = prom.Histogram(PREFIX + "batch_seconds", "Seconds in the scorer per "
                                        "batch.", ["model", "version"], buckets=LATENCY_BUCKETS,
                                        registry=r)
    self.queue_depth = prom.Gauge(PREFIX + "queue_depth", "Items waiting per model version.",
                                  ["model", "version"], registry=r)
    self.latency = prom.Histogram(PREFIX + "request_latency_seconds", "Latency of /v1/score "
                                  "requests, arrival to response.", buckets=LATENCY_BUCKETS,
                                  registry=r)
    self.latency_quantile = prom.Gauge(PREFIX + "request_latency_quantile_seconds",
                                       "Latency quantiles of recent /v1/score requests.",
                                       ["quantile"], registry=r)
    self.cache_hits = prom.Counter(PREFIX + "cache_hits", "Items answered from the cache.",
                                   registry=r)
    self.cache_misses = prom.Counter(PREFIX + "cache_misses", "Items not found in the cache.",
                                     registry=r)
    self.cache_hit_rate = prom.Gauge(PREFIX + "cache_hit_rate", "Cache hits / lookups over the "
                                     "server's lifetime.", registry=r)
    self.cache_entries = prom.Gauge(PREFIX + "cache_entries", "Entries in the cache.", registry=r)
    self.score = prom.Histogram(PREFIX + "score", "Served scores per model version.",
                                ["model", "version"], buckets=SCORE_BUCKETS, registry=r)
    self.canary_fraction = prom.Gauge(PREFIX + "canary_fraction", "Share of unpinned traffic "
                                      "routed to the canary.", ["model"], registry=r)
    self._recent_latency: collections.deque[float] = collections.deque(maxlen=latency_window)
    self._lock = threading.Lock()

  def observe_latency(self, seconds: float) -> None:
    self.latency.observe(seconds)
    with self._lock:
      self._recent_latency.append(seconds)

  def latency_quantiles(self) -> dict[float, float]:
    """{0.5: p50, 0.99: p99} in seconds over the recent window (empty before any request)."""
    with self._lock:
      recent = np.asarray(self._recent_latency, np.float64)
    if recent.size == 0:
      return {}
    return dict(zip(LATENCY_QUANTILES, np.quantile(recent, LATENCY_QUANTILES).tolist()))

  def watch_cache(self, hit_rate: Callable[[], float], entries: Callable[[], float]) -> None:
    """Reads the cache's hit rate and size at scrape time."""
    self.cache_hit_rate.set_function(hit_rate)
    self.cache_entries.set_function(entries)

  def observe_scores(self, model: str, version: str, scores: Sequence[float]) -> None:
    hist = self.score.labels(model, version)
    for s in scores:
      hist.observe(s)

  def render(self) -> bytes:
    """The Prometheus text format of every metric, latency quantiles refreshed."""
    for q, value in self.latency_quantiles().items():
      self.latency_quantile.labels(str(q)).set(value)
    return prom.generate_latest(self.registry)


CONTENT_TYPE = prom.CONTENT_TYPE_LATEST
