"""Smoke test of experiments/load_test_reward_server.py (the load test itself is a benchmark)."""
import json
import pathlib
import subprocess
import sys

_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_load_test_script_verifies_every_answer():
  out = subprocess.run(
      [sys.executable, str(_ROOT / "experiments" / "load_test_reward_server.py"),
       "--num_requests=60", "--num_clients=3", "--max_items=4", "--pool=20"],
      cwd=_ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.loads(out.stdout.strip().splitlines()[-1])
  assert report["requests"] == 60 and report["lost"] == 0 and report["wrong"] == 0
  assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
  assert report["server"]["cache_hit_rate"] > 0  # the pool of 20 pairs repeats
  assert report["server"]["batches"] >= 1 and report["server"]["errors"] == 0
