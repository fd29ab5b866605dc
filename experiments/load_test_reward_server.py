"""Bounded load test of the reward-model server over loopback (a benchmark, not a timed test).

  python experiments/load_test_reward_server.py --num_requests=3000 --num_clients=8

Starts `experiments/serve_reward_model.py --config.demo=True` in a subprocess on a free port,
sends `num_requests` score requests (1..max_items pairs each, drawn from small pools so the cache
sees repeats) from `num_clients` concurrent client threads, checks every answer against the same
toy scorer computed in this process, and prints one JSON object: throughput, p50 / p99 latency,
lost (requests that raised) and wrong (answers that differ) requests, and server-side batching and
cache figures scraped from /metrics. Exits with status 1 unless lost == wrong == 0.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from rlhf_jax import serving

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_NUM_REQUESTS = flags.DEFINE_integer("num_requests", 3000, "Score requests to send in total.")
_NUM_CLIENTS = flags.DEFINE_integer("num_clients", 8, "Concurrent client threads.")
_MAX_ITEMS = flags.DEFINE_integer("max_items", 8, "Pairs per request, drawn from 1..max_items.")
_POOL = flags.DEFINE_integer("pool", 400, "Distinct pairs to draw from (repeats hit the cache).")
_TIMEOUT_S = flags.DEFINE_float("timeout_s", 10.0, "Client timeout per attempt, seconds.")
_BATCH_DELAY_MS = flags.DEFINE_float("batch_delay_ms", 0.0, "Simulated model time per batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the request contents.")


def _server_overrides(port_file: str) -> list[str]:
  return ["--config.demo=True", "--config.port=0", f"--port_file={port_file}",
          "--config.log_level=warning", "--config.models.main.max_seq_len=4096",
          f"--config.models.main.batch_delay_ms={_BATCH_DELAY_MS.value}"]


def _expected_scorer() -> serving.Scorer:
  """The scorer the demo server runs, rebuilt here from the same config file and overrides."""
  spec = importlib.util.spec_from_file_location("serve_config", _ROOT / "configs"
                                                / "serve_reward_model.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.demo = True
  cfg.models.main.max_seq_len = 4096
  return serving.load_scorer(serving.ServingConfig.from_config_dict(cfg).models[0], demo=True)


def _start_server(workdir: str) -> tuple[subprocess.Popen, str]:
  port_file = os.path.join(workdir, "port")
  proc = subprocess.Popen([sys.executable, str(_ROOT / "experiments" / "serve_reward_model.py"),
                           *_server_overrides(port_file)], cwd=_ROOT)
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f"server exited with status {proc.returncode} during start-up")
    if os.path.exists(port_file):
      url = f"http://127.0.0.1:{int(pathlib.Path(port_file).read_text())}"
      try:
        if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
          return proc, url
      except httpx.HTTPError:
        pass
    time.sleep(0.05)
  proc.kill()
  raise TimeoutError("server did not become ready within 60 s")


def _workload(n: int) -> list[tuple[list[str], list[str]]]:
  rng = np.random.default_rng(_SEED.value)
  requests = []
  for _ in range(n):
    k = int(rng.integers(1, _MAX_ITEMS.value + 1))
    ids = rng.integers(0, _POOL.value, size=k)
    requests.append(([f"Question {i % 50}: how is item {i % 50}?" for i in ids],
                     [f"Answer {i}: " + "word " * int(i % 17) for i in ids]))
  return requests


def _scrape(url: str) -> dict:
  text = httpx.get(url + "/metrics", timeout=5.0).text
  values: dict[str, float] = {}
  for family in text_string_to_metric_families(text):
    for sample in family.samples:
      if sample.name.endswith(("_sum", "_count", "_total")) or sample.name.endswith("hit_rate"):
        values[sample.name] = values.get(sample.name, 0.0) + sample.value
  batches = values.get("rlhf_serving_batch_size_count", 0.0)
  return {"batches": int(batches),
          "mean_batch_size": values.get("rlhf_serving_batch_size_sum", 0.0) / max(batches, 1.0),
          "cache_hit_rate": values.get("rlhf_serving_cache_hit_rate", 0.0),
          "errors": int(values.get("rlhf_serving_errors_total", 0.0))}


def main(argv):
  del argv
  logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
  scorer = _expected_scorer()
  requests = _workload(_NUM_REQUESTS.value)
  expected = [scorer.score_batch(p, r)["score"] for p, r in requests]
  latencies = np.zeros(len(requests))
  status = ["pending"] * len(requests)
  attempts = [0] * _NUM_CLIENTS.value

  with tempfile.TemporaryDirectory() as workdir:
    proc, url = _start_server(workdir)
    try:
      served = httpx.get(url + "/v1/models", timeout=5.0).json()["models"][0]
      if served["stable"] != scorer.version:
        raise RuntimeError(f"server runs version {served['stable']}, expected {scorer.version}")

      def client_loop(c: int) -> None:
        with serving.RewardClient(url, served["name"], batch_size=_MAX_ITEMS.value,
                                  timeout_s=_TIMEOUT_S.value, max_retries=2) as client:
          for i in range(c, len(requests), _NUM_CLIENTS.value):
            start = time.perf_counter()
            try:
              got = client.score(*requests[i]).scores
              status[i] = "ok" if np.array_equal(got, expected[i]) else "wrong"
            except serving.RewardServiceError:
              status[i] = "lost"
            latencies[i] = time.perf_counter() - start
          attempts[c] = client.attempts

      threads = [threading.Thread(target=client_loop, args=(c,))
                 for c in range(_NUM_CLIENTS.value)]
      start = time.perf_counter()
      for t in threads:
        t.start()
      for t in threads:
        t.join()
      seconds = time.perf_counter() - start
      server = _scrape(url)
    finally:
      proc.send_signal(signal.SIGTERM)
      try:
        proc.wait(10)
      except subprocess.TimeoutExpired:
        proc.kill()

  items = sum(len(p) for p, _ in requests)
  report = {
      "requests": len(requests), "items": items, "clients": _NUM_CLIENTS.value,
      "seconds": round(seconds, 3),
      "throughput_requests_per_s": round(len(requests) / seconds, 1),
      "throughput_items_per_s": round(items / seconds, 1),
      "latency_ms": {"p50": round(float(np.quantile(latencies, 0.5)) * 1e3, 2),
                     "p99": round(float(np.quantile(latencies, 0.99)) * 1e3, 2),
                     "max": round(float(latencies.max()) * 1e3, 2)},
      "lost": status.count("lost") + status.count("pending"), "wrong": status.count("wrong"),
      "retries": sum(attempts) - len(requests), "server": server}
  print(json.dumps(report), flush=True)
  if report["lost"] or report["wrong"]:
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
