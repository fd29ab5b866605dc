"""Tests for rlhf_jax/serving/app.py + service.py: the real server over loopback HTTP."""
import concurrent.futures
import json
import logging
import re
import time

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
import pytest

from rlhf_jax.serving import config as config_lib
from rlhf_jax.serving import registry as registry_lib
from rlhf_jax.serving import structured_log
from rlhf_jax.serving.scorer import HashScorer
from rlhf_jax.serving.testing import GatedScorer, running_server


# One client for the module: httpx.post() would build a client (and a TLS context) per call.
_HTTP = httpx.Client(timeout=10.0, verify=False)


def _post(server, body, path="/v1/score"):
  data = body if isinstance(body, (bytes, str)) else json.dumps(body)
  return _HTTP.post(server.url + path, content=data, headers={"content-type": "application/json"})


def _score_body(prompts, responses, model="rm", **extra):
  return {"model": model, "prompts": prompts, "responses": responses, **extra}


def _metrics(server):
  text = _HTTP.get(server.url + "/metrics").text
  return text, {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}


def _wait_for(condition, timeout_s=5.0):
  deadline = time.monotonic() + timeout_s
  while not condition():
    assert time.monotonic() < deadline, "condition not reached in time"
    time.sleep(0.005)


def test_scores_equal_the_in_process_scorer_and_health_routes_answer():
  rm = HashScorer(name="rm", salt="x", ensemble_size=3)
  prompts = ["Hi", "Write a poem.", "é", "Hi", ""]
  responses = ["Hello!", "Roses are red.", "ü ✓", "Hello!", "x"]
  with running_server(rm) as server:
    assert _HTTP.get(server.url + "/healthz").json() == {"status": "ok"}
    assert _HTTP.get(server.url + "/readyz").status_code == 200
    models = _HTTP.get(server.url + "/v1/models").json()["models"]
    assert models[0]["name"] == "rm" and models[0]["stable"] == rm.version
    assert models[0]["versions"][0]["max_seq_len"] == rm.max_seq_len
    r = _post(server, _score_body(prompts, responses, request_id="abc"))
    assert r.status_code == 200, r.text
    body = r.json()
  expected = rm.score_batch(prompts, responses)
  assert body["request_id"] == "abc" and body["version"] == rm.version
  np.testing.assert_array_equal(body["scores"], expected["score"])  # exact through JSON
  for key in ("raw", "normalized", "std"):
    np.testing.assert_array_equal(body["outputs"][key], expected[key])
  assert body["num_cached"] == 0  # a pair repeated inside one request is looked up before scoring


def test_every_error_path_gets_a_clear_4xx_and_the_server_keeps_serving():
  rm = HashScorer(name="rm", max_seq_len=20)
  limits = config_lib.Limits(max_request_bytes=2000, max_items_per_request=4, max_text_chars=30)
  good = _score_body(["p"], ["r"])
  cases = [
      (b'{"model": "rm", "prompts": [', 400, "malformed_json", "not valid JSON"),
      (b"\xff\xfe", 400, "malformed_json", "not valid JSON"),
      ([1, 2], 422, "invalid_request", "must be a JSON object"),
      ({"prompts": ["p"], "responses": ["r"]}, 422, "invalid_request", "'model'"),
      ({**good, "prompt": "x"}, 422, "invalid_request", "unknown field\\(s\\) \\['prompt'\\]"),
      (_score_body("p", ["r"]), 422, "invalid_request", "'prompts' must be a list"),
      (_score_body(["p", "q"], ["r"]), 422, "invalid_request", "2 items but 'responses' has 1"),
      (_score_body([], []), 422, "invalid_request", "empty"),
      (_score_body(["p", 3], ["r", "s"]), 422, "invalid_request",
       "prompts\\[1\\] must be a string"),
      ({**good, "timeout_ms": -5}, 422, "invalid_request", "timeout_ms"),
      ({**good, "request_id": ""}, 422, "invalid_request", "request_id"),
      (_score_body(["p"], ["r"], model="nope"), 404, "unknown_model", "unknown model 'nope'"),
      ({**good, "version": "v0"}, 404, "unknown_model", "no version 'v0'"),
      (_score_body(["p", "p"], ["ok", "x" * 25]), 422, "input_too_long",
       "item 1: prompt \\+ response is 26 bytes, over the model's max_seq_len of 20"),
      (_score_body(["p"], ["y" * 31]), 422, "input_too_long", "responses\\[0\\] has 31 characters"),
      (_score_body(["p"] * 5, ["r"] * 5), 413, "batch_too_large", "5 items, over the limit of 4"),
      (_score_body(["p"], ["r" * 2100]), 413, "request_too_large", "exceeds the limit of 2000"),
  ]
  with running_server(rm, limits=limits) as server:
    for body, status, kind, message in cases:
      r = _post(server, body)
      assert r.status_code == status, (body, r.text)
      error = r.json()["error"]
      assert error["kind"] == kind, (body, error)
      assert re.search(message, error["message"]), (message, error)
    r = _HTTP.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["kind"] == "not_found"
    r = _HTTP.get(server.url + "/v1/score")
    assert r.status_code == 405 and r.json()["error"]["kind"] == "method_not_allowed"
    r = _post(server, good)  # still serving, with the right answer
    assert r.status_code == 200
    assert r.json()["scores"] == rm.score_batch(["p"], ["r"])["score"].tolist()
    _, samples = _metrics(server)
  assert samples[("rlhf_serving_errors_total", (("kind", "malformed_json"),))] == 2
  assert samples[("rlhf_serving_errors_total", (("kind", "input_too_long"),))] == 2
  assert samples[("rlhf_serving_requests_total", (("route", "/v1/score"), ("status", "413")))] == 2


def test_a_bad_request_never_poisons_the_batch_it_arrives_with():
  rm = GatedScorer(name="rm", max_seq_len=50)
  batching = config_lib.Batching(max_batch_size=8, max_wait_ms=0.0)
  with running_server(rm, batching=batching) as server, \
      concurrent.futures.ThreadPoolExecutor(3) as pool:
    first = pool.submit(_post, server, _score_body(["p"], ["first"]))
    _wait_for(rm.entered.is_set)  # the scorer thread is busy with "first"
    second = pool.submit(_post, server, _score_body(["p", "p"], ["second", "third"]))
    _wait_for(lambda: server.service.batcher("rm", rm.version).depth == 2)
    bad = _post(server, _score_body(["p", "p"], ["fine", "z" * 60]))  # arrives mid-batch
    assert bad.status_code == 422 and "item 1" in bad.json()["error"]["message"]
    rm.gate.set()
    assert first.result().status_code == 200 and second.result().status_code == 200
    got = second.result().json()["scores"]
  assert got == HashScorer(name="rm").score_batch(["p", "p"], ["second", "third"])["score"].tolist()
  assert rm.batch_sizes == [1, 2]  # the bad request's valid item never reached the model


def test_full_queue_answers_429_with_retry_after():
  rm = GatedScorer(name="rm")
  batching = config_lib.Batching(max_batch_size=1, max_wait_ms=0.0, max_queue_items=2)
  with running_server(rm, batching=batching) as server, \
      concurrent.futures.ThreadPoolExecutor(2) as pool:
    busy = pool.submit(_post, server, _score_body(["p"], ["busy"]))
    _wait_for(rm.entered.is_set)
    queued = pool.submit(_post, server, _score_body(["p", "p"], ["a", "b"]))
    _wait_for(lambda: server.service.batcher("rm", rm.version).depth == 2)
    r = _post(server, _score_body(["p"], ["c"]))
    assert r.status_code == 429 and r.json()["error"]["kind"] == "queue_full"
    assert int(r.headers["retry-after"]) >= 1
    rm.gate.set()
    assert busy.result().status_code == 200 and queued.result().status_code == 200
    assert _post(server, _score_body(["p"], ["c"])).status_code == 200  # room again


def test_deadline_exceeded_answers_504_and_later_requests_succeed():
  rm = GatedScorer(name="rm")
  with running_server(rm) as server:
    start = time.perf_counter()
    r = _post(server, _score_body(["p"], ["slow"], timeout_ms=150))
    elapsed = time.perf_counter() - start
    assert r.status_code == 504 and r.json()["error"]["kind"] == "deadline_exceeded"
    assert "150 ms" in r.json()["error"]["message"] and 0.14 <= elapsed < 2.0
    rm.gate.set()
    assert _post(server, _score_body(["p"], ["fast"])).status_code == 200
    _, samples = _metrics(server)
  assert samples[("rlhf_serving_errors_total", (("kind", "deadline_exceeded"),))] == 1


def test_identical_requests_are_answered_from_the_cache():
  rm = GatedScorer(name="rm")
  rm.gate.set()
  other = HashScorer(name="rm", salt="other")
  body = _score_body(["p", "p", "q"], ["a", "b", "c"])
  with running_server(rm, other) as server:
    first = _post(server, body).json()
    second = _post(server, body).json()
    pinned = _post(server, {**body, "version": other.version}).json()  # another version: misses
    text, samples = _metrics(server)
  assert first["num_cached"] == 0 and second["num_cached"] == 3 and pinned["num_cached"] == 0
  assert second["scores"] == first["scores"] and second["outputs"] == first["outputs"]
  assert rm.batch_sizes == [3]  # the second request never reached the model
  assert samples[("rlhf_serving_cache_hits_total", ())] == 3
  assert samples[("rlhf_serving_cache_misses_total", ())] == 6
  assert samples[("rlhf_serving_cache_hit_rate", ())] == pytest.approx(3 / 9)
  assert samples[("rlhf_serving_items_total", (("model", "rm"), ("source", "cache"),
                                               ("version", rm.version)))] == 3


def test_versions_canary_compare_promote_and_rollback_without_restart():
  v1 = HashScorer(name="rm", salt="s")
  v2 = HashScorer(name="rm", salt="s", offset=3.0)
  prompts = ["p"] * 4

  def route_all(server, n=60):
    versions = []
    for k in range(n):
      r = _post(server, _score_body(prompts, [f"{k}-{i}" for i in range(4)], routing_key=f"k{k}"))
      assert r.status_code == 200, r.text
      body = r.json()
      scorer = v1 if body["version"] == v1.version else v2
      assert body["scores"] == scorer.score_batch(prompts, [f"{k}-{i}" for i in range(4)])[
          "score"].tolist()
      versions.append(body["version"])
    return versions

  with running_server(v1, routing_seed=3) as server:
    assert set(route_all(server, 10)) == {v1.version}
    spec = {"kind": "hash", "salt": "s", "offset": 3.0}
    r = _post(server, {"spec": spec, "role": "canary", "fraction": 0.5},
              path="/v1/models/rm/versions")
    assert r.status_code == 200, r.text
    assert r.json()["canary"] == v2.version and r.json()["canary_fraction"] == 0.5
    again = _post(server, {"spec": spec}, path="/v1/models/rm/versions")
    assert again.status_code == 409 and again.json()["error"]["kind"] == "conflict"
    versions = route_all(server)
    expected = [v2.version if registry_lib.route_unit(3, "rm", f"k{k}") < 0.5 else v1.version
                for k in range(60)]
    assert versions == expected and 10 < versions.count(v2.version) < 50
    cmp = _HTTP.get(server.url + "/v1/models/rm/compare").json()
    assert cmp["a"]["version"] == v1.version and cmp["b"]["version"] == v2.version
    assert cmp["mean_difference"] == pytest.approx(3.0, abs=0.5) and cmp["ks_statistic"] > 0.8
    _, samples = _metrics(server)
    assert samples[("rlhf_serving_canary_fraction", (("model", "rm"),))] == 0.5
    assert samples[("rlhf_serving_score_count", (("model", "rm"), ("version", v2.version)))] == \
        4 * versions.count(v2.version)
    # Roll back: all unpinned traffic returns to v1; v2 stays loaded and pinnable.
    assert _post(server, {}, path="/v1/models/rm/rollback").json()["canary"] is None
    assert set(route_all(server, 20)) == {v1.version}
    assert _post(server, _score_body(["p"], ["x"], version=v2.version)).json()["version"] == \
        v2.version
    # Canary again, then promote: all traffic to v2, v1 can still be restored.
    r = _post(server, {"version": v2.version, "fraction": 0.2}, path="/v1/models/rm/canary")
    assert r.json()["canary_fraction"] == 0.2
    assert _post(server, {}, path="/v1/models/rm/promote").json()["stable"] == v2.version
    assert set(route_all(server, 20)) == {v2.version}
    r = _HTTP.delete(server.url + f"/v1/models/rm/versions/{v2.version}")
    assert r.status_code == 409 and "stable version" in r.json()["error"]["message"]
    assert _post(server, {"version": v1.version}, path="/v1/models/rm/stable").json()[
        "stable"] == v1.version
    assert _HTTP.delete(server.url + f"/v1/models/rm/versions/{v2.version}").status_code == 200
    r = _post(server, _score_body(["p"], ["x"], version=v2.version))
    assert r.status_code == 404
    bad = _post(server, {"version": v1.version, "fraction": "half"}, path="/v1/models/rm/canary")
    assert bad.status_code == 422 and "'fraction' must be float" in bad.json()["error"]["message"]
    ckpt = _post(server, {"spec": {"kind": "checkpoint", "path": "/x"}},
                 path="/v1/models/rm/versions")
    assert ckpt.status_code == 422 and "no exported reward model" in ckpt.json()["error"]["message"]


def test_admin_routes_can_be_disabled():
  with running_server(HashScorer(name="rm"), admin_enabled=False) as server:
    r = _post(server, {}, path="/v1/models/rm/promote")
    assert r.status_code == 403 and r.json()["error"]["kind"] == "admin_disabled"


def test_metrics_endpoint_exports_the_named_metrics_and_logs_are_structured(caplog):
  rm = HashScorer(name="rm")
  with caplog.at_level(logging.INFO, logger="rlhf_jax.serving"), running_server(rm) as server:
    for k in range(5):
      assert _post(server, _score_body(["p"] * 3, [f"{k}a", f"{k}b", f"{k}c"],
                                       request_id=f"id{k}")).status_code == 200
    _post(server, _score_body(["p"], ["r"], model="nope"))
    text, samples = _metrics(server)
  for name in ("rlhf_serving_requests_total", "rlhf_serving_errors_total",
               "rlhf_serving_batch_size_bucket", "rlhf_serving_queue_depth",
               "rlhf_serving_request_latency_seconds_bucket",
               'rlhf_serving_request_latency_quantile_seconds{quantile="0.5"}',
               'rlhf_serving_request_latency_quantile_seconds{quantile="0.99"}',
               "rlhf_serving_cache_hits_total", "rlhf_serving_cache_hit_rate",
               "rlhf_serving_score_bucket", "rlhf_serving_canary_fraction",
               "rlhf_serving_items_total", "rlhf_serving_batch_seconds_bucket"):
    assert name in text, name
  assert samples[("rlhf_serving_request_latency_seconds_count", ())] == 6
  assert samples[("rlhf_serving_batch_size_sum", (("model", "rm"), ("version", rm.version)))] == 15
  assert samples[("rlhf_serving_queue_depth", (("model", "rm"), ("version", rm.version)))] == 0
  access = [r for r in caplog.records if r.name == "rlhf_jax.serving.access"]
  assert [r.fields["request_id"] for r in access[:5]] == [f"id{k}" for k in range(5)]
  assert access[0].fields["status"] == 200 and access[0].fields["model"] == "rm"
  assert access[0].fields["version"] == rm.version and access[0].fields["items"] == 3
  assert access[5].fields["status"] == 404 and access[5].fields["error_kind"] == "unknown_model"
  line = json.loads(structured_log.JsonFormatter().format(access[0]))
  assert line["msg"] == "request" and line["status"] == 200 and "latency_ms" in line
