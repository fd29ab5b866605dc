"""Tests for rlhf_jax/serving/client.py: retries, failures that surface, best-of-N end to end."""
import json
import pathlib
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.lab import corpora
from rlhf_jax.lab import gold as gold_lib
from rlhf_jax.lab import sampler as sampler_lib
from rlhf_jax.serving.client import RewardClient, RewardServiceError
from rlhf_jax.serving.scorer import HashScorer, ModelScorer
from rlhf_jax.serving.testing import FailFirst, GatedScorer, running_server

_ROOT = pathlib.Path(__file__).resolve().parent.parent


class _Sleeps(list):
  def __call__(self, seconds):
    self.append(seconds)


def _client(url, model="rm", **kw):
  kw = {"timeout_s": 5.0, "max_retries": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05,
        "jitter": 0.0, **kw}
  return RewardClient(url, model, **kw)


@pytest.mark.parametrize("status", [503, 500, 429])
def test_retries_until_the_server_recovers(status):
  rm = HashScorer(name="rm")
  sleeps = _Sleeps()
  with running_server(rm, wrap=lambda app: FailFirst(app, failures=2, status=status)) as server:
    with _client(server.url, sleep=sleeps) as client:
      result = client.score(["p", "q"], ["a", "b"])
      assert client.attempts == 3
  np.testing.assert_array_equal(result.scores, rm.score_batch(["p", "q"], ["a", "b"])["score"])
  assert sleeps == [0.01, 0.02]  # exponential: initial * 2**k (no jitter here)


def test_gives_up_after_bounded_retries_with_a_clear_error():
  sleeps = _Sleeps()
  wrap = lambda app: FailFirst(app, failures=100, status=503)  # noqa: E731
  with running_server(HashScorer(name="rm"), wrap=wrap) as server:
    with _client(server.url, max_retries=2, sleep=sleeps) as client:
      with pytest.raises(RewardServiceError) as e:
        client.score(["p"], ["a"])
      assert client.attempts == 3
  message = str(e.value)
  assert "failed scoring items 0..0 after 3 attempt(s)" in message and "HTTP 503" in message
  assert "never scored as 0" in message and e.value.status == 503 and e.value.attempts == 3
  assert sleeps == [0.01, 0.02]


def test_backoff_is_capped_jittered_and_honours_retry_after():
  client = RewardClient("http://127.0.0.1:9", "rm", backoff_initial_s=0.1, backoff_max_s=0.5,
                        jitter=0.5, seed=0)
  for retry in range(6):
    cap = min(0.5, 0.1 * 2**retry)
    delays = [client.backoff_s(retry) for _ in range(200)]
    assert cap * 0.5 <= min(delays) and max(delays) <= cap
    assert max(delays) - min(delays) > 0.3 * cap  # the jitter spreads retries out
  assert client.backoff_s(0, retry_after_s=0.3) >= 0.3  # Retry-After raises the delay...
  assert client.backoff_s(0, retry_after_s=60.0) <= 0.5  # ...but never past backoff_max_s
  sleeps = _Sleeps()
  wrap = lambda app: FailFirst(app, failures=1, status=429, retry_after="1")  # noqa: E731
  with running_server(HashScorer(name="rm"), wrap=wrap) as server:
    with _client(server.url, backoff_max_s=2.0, sleep=sleeps) as c:
      c.score(["p"], ["a"])
  assert sleeps == [1.0]
  with pytest.raises(ValueError, match="jitter in \\[0, 1\\]"):
    RewardClient("http://x", "rm", jitter=2.0)


def test_client_errors_are_not_retried():
  with running_server(HashScorer(name="rm", max_seq_len=10)) as server:
    with _client(server.url, model="nope") as client:
      with pytest.raises(RewardServiceError, match="HTTP 404 unknown_model.*not retried") as e:
        client.score(["p"], ["a"])
      assert client.attempts == 1 and e.value.kind == "unknown_model"
    with _client(server.url) as client:
      with pytest.raises(RewardServiceError, match="HTTP 422 input_too_long"):
        client.score(["p"], ["a" * 20])
      assert client.attempts == 1


def test_timeouts_are_retried_then_raised():
  rm = GatedScorer(name="rm", gate_timeout_s=5.0)
  with running_server(rm) as server:
    start = time.perf_counter()
    with _client(server.url, timeout_s=0.2, max_retries=1) as client:
      with pytest.raises(RewardServiceError, match="after 2 attempt\\(s\\)") as e:
        client.score(["p"], ["slow"])
      assert client.attempts == 2
    rm.gate.set()
  assert time.perf_counter() - start < 3.0
  assert "timed out" in str(e.value) or "504" in str(e.value)  # client or server deadline first


def test_a_dead_server_raises_quickly():
  with running_server(HashScorer(name="rm")) as server:
    url = server.url
  start = time.perf_counter()
  with _client(url, max_retries=2) as client:
    with pytest.raises(RewardServiceError, match="after 3 attempt\\(s\\); last error: connection "
                                                 "error"):
      client.as_reward_fn()(["p"], ["a"])
    assert time.perf_counter() - start < 2.0
    assert not client.health() and not client.ready()


@pytest.mark.parametrize("payload,message", [
    ({"scores": [1.0], "version": "v"}, "expected 2 finite numbers"),
    ({"scores": [1.0, float("nan")], "version": "v"}, "expected 2 finite numbers"),
    ({"scores": [1.0, "2"], "version": "v"}, "expected 2 finite numbers"),
    ({"scores": [1.0, 2.0], "outputs": {"std": [0.1]}, "version": "v"}, "output 'std'"),
    ([1.0, 2.0], "not a JSON object"),
])
def test_malformed_answers_raise_instead_of_producing_rewards(payload, message):
  transport = httpx.MockTransport(
      lambda request: httpx.Response(200, content=json.dumps(payload).encode()))
  with _client("http://mock", transport=transport) as client:
    with pytest.raises(RewardServiceError, match=message):
      client.as_reward_fn()(["p", "q"], ["a", "b"])


def test_chunks_share_a_routing_key_so_one_call_sees_one_version():
  v1, v2 = HashScorer(name="rm", salt="1"), HashScorer(name="rm", salt="2")
  with running_server(v1, v2) as server:
    server.service.set_canary("rm", v2.version, 0.5)
    with _client(server.url, batch_size=3) as client:
      seen = set()
      for call in range(12):
        responses = [f"{call}-{i}" for i in range(8)]
        result = client.score(["p"] * 8, responses)
        scorer = v1 if result.version == v1.version else v2  # raises if chunks were split
        expected = scorer.score_batch(["p"] * 8, responses)
        np.testing.assert_array_equal(result.scores, expected["score"])
        np.testing.assert_array_equal(result.outputs["std"], expected["std"])
        seen.add(result.version)
      assert client.attempts == 12 * 3  # 8 items in chunks of 3
    with _client(server.url, version=v2.version) as pinned:
      assert pinned.score(["p"], ["x"]).version == v2.version
  assert seen == {v1.version, v2.version}


def _best_of_n(reward_fn, prompts, rng, n=4):
  """A best-of-N run: sample n reviews per prompt, keep the one the reward model scores highest."""
  sampler = sampler_lib.ReviewSampler()
  chosen, first = [], []
  for prompt in prompts:
    product, aspect = gold_lib.parse_prompt(prompt)
    candidates = [sampler.sample(product, aspect, rng).text for _ in range(n)]
    rewards_N = reward_fn([prompt] * n, candidates)
    assert rewards_N.shape == (n,) and rewards_N.dtype == np.float32
    chosen.append(candidates[int(np.argmax(rewards_N))])
    first.append(candidates[0])
  return chosen, first


def test_best_of_n_with_the_remote_reward_equals_the_in_process_reward(testdata_dir):
  tok = Tokenizer.load(testdata_dir / "tokenizer_512.model")
  gold = ModelScorer("gold", "gold-v1", lambda p, r: {"score": gold_lib.gold_reward(p, r).total},
                     tok, max_seq_len=256, max_batch_size=16,
                     validate_fn=lambda p, r: gold_lib.parse_prompt(p))
  prompts = [r["prompt"] for r in corpora.review_prompts(corpora.LabConfig.small(), "eval")[:8]]

  def local_reward_fn(p, r):
    return gold_lib.gold_reward(p, r).total.astype(np.float32)

  with running_server(gold) as server, _client(server.url, model="gold") as client:
    remote, first = _best_of_n(client.as_reward_fn(), prompts, np.random.default_rng(0))
    with pytest.raises(RewardServiceError, match="422 invalid_input.*exactly one product"):
      client.score(["Write a poem."], ["A poem."])
  local, _ = _best_of_n(local_reward_fn, prompts, np.random.default_rng(0))
  assert remote == local
  gold_best = gold_lib.gold_reward(prompts, remote).total
  assert gold_best.mean() > gold_lib.gold_reward(prompts, first).total.mean()


def test_killing_the_server_mid_run_fails_the_run_instead_of_faking_rewards(tmp_path):
  port_file = tmp_path / "port"
  proc = subprocess.Popen(
      [sys.executable, str(_ROOT / "experiments" / "serve_reward_model.py"), "--config.demo=True",
       "--config.port=0", f"--port_file={port_file}", "--config.log_level=warning"],
      cwd=_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + 30
    while not port_file.exists():
      assert proc.poll() is None, proc.stderr.read().decode()
      assert time.monotonic() < deadline, "server did not start"
      time.sleep(0.05)
    url = f"http://127.0.0.1:{int(port_file.read_text())}"
    expected = HashScorer(name="reward")  # what the default config serves in demo mode
    prompts = ["Write a review of the kettle.", "How is the lid of the kettle?"]
    with _client(url, model="reward", max_retries=2) as client:
      deadline = time.monotonic() + 30
      while not client.ready():
        assert time.monotonic() < deadline, "server not ready"
        time.sleep(0.05)
      assert client.models()[0]["stable"] == expected.version
      reward_fn = client.as_reward_fn()
      rng = np.random.default_rng(0)
      steps = []
      with pytest.raises(RewardServiceError, match="connection error"):
        for step in range(10):
          if step == 3:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
          chosen, _ = _best_of_n(reward_fn, prompts, rng)
          steps.append(chosen)
    assert len(steps) == 3  # the run stopped at the first step after the kill
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait(10)
  # The steps before the kill used the real scores of the served (demo) model.
  rng = np.random.default_rng(0)
  local = [_best_of_n(lambda p, r: expected.score_batch(p, r)["score"].astype(np.float32),
                      prompts, rng)[0] for _ in range(3)]
  assert steps == local
