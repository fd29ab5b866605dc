"""Tests for rlhf_jax/serving/metrics.py: private registries, latency quantiles, exposition."""
import numpy as np
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families
import pytest

from rlhf_jax.serving import metrics as metrics_lib


def _samples(text):
  return {(s.name, tuple(sorted(s.labels.items()))): s.value
          for family in text_string_to_metric_families(text) for s in family.samples}


def test_each_instance_has_its_own_registry():
  a, b = metrics_lib.ServingMetrics(), metrics_lib.ServingMetrics()  # would raise if global
  a.requests.labels("/v1/score", "200").inc(3)
  assert _samples(b.render().decode()).get(
      ("rlhf_serving_requests_total", (("route", "/v1/score"), ("status", "200")))) is None
  assert _samples(a.render().decode())[
      ("rlhf_serving_requests_total", (("route", "/v1/score"), ("status", "200")))] == 3.0
  names = {m.name for m in prometheus_client.REGISTRY.collect()}
  assert not any(n.startswith("rlhf_serving") for n in names)


def test_latency_quantiles_match_numpy_over_the_window():
  m = metrics_lib.ServingMetrics(latency_window=100)
  assert m.latency_quantiles() == {}
  latencies = np.random.default_rng(0).exponential(0.01, size=300)
  for x in latencies:
    m.observe_latency(float(x))
  q = m.latency_quantiles()
  assert q[0.5] == pytest.approx(np.quantile(latencies[-100:], 0.5))
  assert q[0.99] == pytest.approx(np.quantile(latencies[-100:], 0.99))
  samples = _samples(m.render().decode())
  assert samples[("rlhf_serving_request_latency_quantile_seconds",
                  (("quantile", "0.99"),))] == pytest.approx(q[0.99])
  assert samples[("rlhf_serving_request_latency_seconds_count", ())] == 300


def test_cache_gauges_are_read_at_scrape_time_and_scores_are_per_version():
  m = metrics_lib.ServingMetrics()
  state = {"rate": 0.25, "entries": 7}
  m.watch_cache(lambda: state["rate"], lambda: state["entries"])
  m.observe_scores("rm", "v1", [0.1, -0.2, 4.9])
  m.observe_scores("rm", "v2", [3.0])
  state["rate"] = 0.75
  samples = _samples(m.render().decode())
  assert samples[("rlhf_serving_cache_hit_rate", ())] == 0.75
  assert samples[("rlhf_serving_cache_entries", ())] == 7
  assert samples[("rlhf_serving_score_count", (("model", "rm"), ("version", "v1")))] == 3
  assert samples[("rlhf_serving_score_count", (("model", "rm"), ("version", "v2")))] == 1
  assert samples[("rlhf_serving_score_bucket", (("le", "0.0"), ("model", "rm"),
                                                ("version", "v1")))] == 1
