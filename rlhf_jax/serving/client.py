"""Client of the reward-model service, usable as the reward source of PPO, GRPO and best-of-N.

    with RewardClient("http://127.0.0.1:8000", model="rm", timeout_s=5, max_retries=3) as rm:
      reward_fn = rm.as_reward_fn()            # (prompts, responses) -> float32 [B]
      rewards_B = reward_fn(prompts, responses)

A call splits its items into requests of at most `batch_size`, each tried up to 1 + max_retries
times. Timeouts, connection errors, 429 and 5xx are retried after an exponential backoff with
jitter, `min(backoff_max_s, backoff_initial_s * 2**k) * (1 - jitter * U[0, 1))` for the k-th retry
(at least the server's Retry-After, capped at backoff_max_s); other 4xx answers are the caller's
bug and fail at once. When a request still fails, the call raises `RewardServiceError` naming the
server, the model, the attempts and the last error: a failed call never yields a reward of 0 or
NaN, and a response with a wrong number of scores or a non-finite score is an error too.

All chunks of one call carry the same routing key, so they reach the same model version (a
trainer's batch is never scored half by the canary); retries reuse each chunk's request id.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
import uuid
from typing import Any, Callable, Optional, Sequence

import httpx
import numpy as np

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# The server's deadline is a little shorter than the client's timeout, so an overloaded server
# answers 504 (and drops the queued items) before the client gives up on the connection.
_SERVER_DEADLINE_SHARE = 0.9


class RewardServiceError(RuntimeError):
  """The reward service could not score a batch; no rewards were produced for it."""

  def __init__(self, message: str, *, status: Optional[int] = None, kind: Optional[str] = None,
               attempts: int = 0):
    super().__init__(message)
    self.status, self.kind, self.attempts = status, kind, attempts


@dataclasses.dataclass
class ScoreResult:
  """Scores of one call: `scores` [B] float64, optional `outputs` [B] each, version per item."""

  scores: np.ndarray
  outputs: dict[str, np.ndarray]
  versions: list[str]
  num_cached: int

  @property
  def version(self) -> str:
    """The single version that scored every item (raises if chunks went to different ones)."""
    distinct = sorted(set(self.versions))
    if len(distinct) != 1:
      raise RewardServiceError(f"items were scored by several versions: {distinct}")
    return distinct[0]


class _Retryable(Exception):
  def __init__(self, description: str, status: Optional[int] = None, kind: Optional[str] = None,
               retry_after_s: Optional[float] = None):
    super().__init__(description)
    self.description, self.status, self.kind = description, status, kind
    self.retry_after_s = retry_after_s


class RewardClient:
  """Synchronous, thread-safe client (see the module docstring).

  Args:
    base_url: e.g. "http://127.0.0.1:8000".
    model: model name to score with.
    version: pin a version (no canary routing) or None for the server's routing.
    batch_size: items per HTTP request (at most the server's limits.max_items_per_request).
    timeout_s: per-attempt timeout (connect, read and write); the server's deadline is 90% of it.
    max_retries: retries after the first attempt of each request.
    backoff_initial_s, backoff_max_s, jitter: the backoff schedule above; jitter in [0, 1].
    seed: seed of the jitter (None: random).
    sleep: called with each backoff delay (tests pass a recorder).
    transport: optional httpx transport (tests).
  """

  def __init__(self, base_url: str, model: str, *, version: Optional[str] = None,
               batch_size: int = 64, timeout_s: float = 30.0, max_retries: int = 3,
               backoff_initial_s: float = 0.1, backoff_max_s: float = 5.0, jitter: float = 0.5,
               seed: Optional[int] = None, sleep: Callable[[float], None] = time.sleep,
               transport: Optional[httpx.BaseTransport] = None):
    if batch_size < 1 or max_retries < 0 or timeout_s <= 0:
      raise ValueError(f"need batch_size >= 1, max_retries >= 0, timeout_s > 0; got "
                       f"{batch_size}, {max_retries}, {timeout_s}")
    if not 0.0 <= jitter <= 1.0 or backoff_initial_s < 0 or backoff_max_s < backoff_initial_s:
      raise ValueError(f"need jitter in [0, 1] and 0 <= backoff_initial_s <= backoff_max_s; got "
                       f"{jitter}, {backoff_initial_s}, {backoff_max_s}")
    self.base_url = base_url.rstrip("/")
    self.model, self.version = model, version
    self.batch_size, self.timeout_s, self.max_retries = batch_size, timeout_s, max_retries
    self.backoff_initial_s, self.backoff_max_s, self.jitter = (backoff_initial_s, backoff_max_s,
                                                               jitter)
    self._rng = random.Random(seed)
    self._sleep = sleep
    # Plain-HTTP services (the loopback default) need no TLS context, whose creation costs
    # ~50 ms per client; https URLs keep certificate verification.
    self._http = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(timeout_s),
                              transport=transport, verify=self.base_url.startswith("https://"))
    self.attempts = 0  # HTTP attempts made so far (for tests and logs)

  # Plumbing -----------------------------------------------------------------------------------

  def close(self) -> None:
    self._http.close()

  def __enter__(self) -> "RewardClient":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def backoff_s(self, retry: int, retry_after_s: Optional[float] = None) -> float:
    """Delay before the `retry`-th retry (0-based)."""
    cap = min(self.backoff_max_s, self.backoff_initial_s * 2.0**retry)
    delay = cap * (1.0 - self.jitter * self._rng.random())
    if retry_after_s is not None:
      delay = max(delay, min(retry_after_s, self.backoff_max_s))
    return delay

  def _attempt(self, method: str, path: str, payload: Any) -> Any:
    """One HTTP attempt; returns the decoded JSON, raises _Retryable or RewardServiceError."""
    self.attempts += 1
    try:
      response = self._http.request(method, path, json=payload)
    except httpx.TimeoutException as e:
      raise _Retryable(f"timed out after {self.timeout_s} s ({type(e).__name__})") from None
    except httpx.TransportError as e:
      raise _Retryable(f"connection error: {type(e).__name__}: {e}") from None
    except httpx.HTTPError as e:
      raise RewardServiceError(f"reward service {self.base_url}: {method} {path} failed: "
                               f"{type(e).__name__}: {e}", attempts=1) from None
    try:
      data = response.json()
    except ValueError:
      data = None
    error = data.get("error") if isinstance(data, dict) else None
    kind = error.get("kind") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else response.text[:200]
    if response.status_code in RETRYABLE_STATUS:
      retry_after = response.headers.get("retry-after")
      raise _Retryable(f"HTTP {response.status_code} {kind or ''}: {message}",
                       status=response.status_code, kind=kind,
                       retry_after_s=float(retry_after) if retry_after and
                       retry_after.replace(".", "", 1).isdigit() else None)
    if response.status_code != 200:
      raise RewardServiceError(
          f"reward service {self.base_url} rejected {method} {path} with HTTP "
          f"{response.status_code} {kind or ''}: {message} (not retried: the request itself is "
          "wrong)", status=response.status_code, kind=kind, attempts=1)
    if data is None:
      raise RewardServiceError(f"reward service {self.base_url} sent a 200 answer that is not "
                               f"JSON: {response.text[:200]!r}", status=200)
    return data

  def _call(self, method: str, path: str, payload: Any = None, what: str = "") -> Any:
    """`_attempt` with bounded retries; raises RewardServiceError after the last one."""
    last: Optional[_Retryable] = None
    for attempt in range(self.max_retries + 1):
      if attempt:
        self._sleep(self.backoff_s(attempt - 1, last.retry_after_s if last else None))
      try:
        return self._attempt(method, path, payload)
      except _Retryable as e:
        last = e
      except RewardServiceError as e:
        e.attempts = attempt + 1
        raise
    assert last is not None
    raise RewardServiceError(
        f"reward service {self.base_url} (model {self.model!r}) failed {what or path} after "
        f"{self.max_retries + 1} attempt(s); last error: {last.description}. No rewards were "
        "produced for these items (a failed call is never scored as 0).",
        status=last.status, kind=last.kind, attempts=self.max_retries + 1)

  # API ----------------------------------------------------------------------------------------

  def health(self) -> bool:
    """True when /healthz answers 200 (a single attempt, no retries)."""
    try:
      return self._http.get("/healthz").status_code == 200
    except httpx.HTTPError:
      return False

  def ready(self) -> bool:
    try:
      return self._http.get("/readyz").status_code == 200
    except httpx.HTTPError:
      return False

  def models(self) -> list[dict[str, Any]]:
    return self._call("GET", "/v1/models", what="listing models")["models"]

  def score(self, prompts: Sequence[str], responses: Sequence[str], *,
            routing_key: Optional[str] = None) -> ScoreResult:
    """Scores every (prompt, response) pair; raises RewardServiceError on any failure."""
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
      raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    routing_key = routing_key or uuid.uuid4().hex
    scores: list[float] = []
    chunk_outputs: list[dict[str, list[float]]] = []
    versions: list[str] = []
    cached = 0
    for start in range(0, len(prompts), self.batch_size):
      chunk_p = prompts[start:start + self.batch_size]
      chunk_r = responses[start:start + self.batch_size]
      payload = {"model": self.model, "prompts": chunk_p, "responses": chunk_r,
                 "request_id": uuid.uuid4().hex, "routing_key": routing_key,
                 "timeout_ms": self.timeout_s * 1000.0 * _SERVER_DEADLINE_SHARE}
      if self.version is not None:
        payload["version"] = self.version
      what = f"scoring items {start}..{start + len(chunk_p) - 1}"
      data = self._call("POST", "/v1/score", payload, what=what)
      if not isinstance(data, dict):
        raise RewardServiceError(f"reward service {self.base_url} answered {what} with "
                                 f"{str(data)[:200]!r}, not a JSON object")
      scores += self._check_values(data.get("scores"), len(chunk_p), f"{what}: 'scores'")
      raw_outputs = data.get("outputs") or {}
      chunk_outputs.append({str(k): self._check_values(v, len(chunk_p), f"{what}: output {k!r}")
                            for k, v in (raw_outputs.items() if isinstance(raw_outputs, dict)
                                         else ())})
      if self.version is not None and data.get("version") != self.version:
        raise RewardServiceError(f"asked for version {self.version!r} of {self.model!r} but the "
                                 f"server answered with {data.get('version')!r}")
      versions += [str(data.get("version"))] * len(chunk_p)
      cached += int(data.get("num_cached", 0))
    common = set.intersection(*(set(o) for o in chunk_outputs)) if chunk_outputs else set()
    return ScoreResult(
        scores=np.asarray(scores, np.float64),
        outputs={k: np.asarray([x for o in chunk_outputs for x in o[k]], np.float64)
                 for k in sorted(common)},
        versions=versions, num_cached=cached)

  def _check_values(self, values: Any, expected: int, what: str) -> list[float]:
    """`values` as floats when it is a list of `expected` finite numbers; else raises."""
    ok = (isinstance(values, list) and len(values) == expected
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  for v in values))
    if not ok:
      raise RewardServiceError(f"reward service {self.base_url} answered {what} with invalid "
                               f"values (expected {expected} finite numbers): {str(values)[:200]}")
    return [float(v) for v in values]

  def as_reward_fn(self, output: str = "score", dtype: Any = np.float32
                   ) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
    """A trainer-facing `reward_fn(prompts, responses) -> [B] array` (raises, never fakes)."""
    def reward_fn(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
      result = self.score(prompts, responses)
      values = result.scores if output == "score" else result.outputs.get(output)
      if values is None:
        raise RewardServiceError(f"model {self.model!r} returned no {output!r} output; it has "
                                 f"{['score', *result.outputs]}")
      return values.astype(dtype)
    return reward_fn
