"""The scoring service behind the HTTP routes: validation, routing, cache, batching, stats.

One `RewardService` runs on the server's event loop. A score request goes through

  1. schema and limit checks (`parse_score_request`)          -> 422 / 413
  2. routing to a version (pinned, else canary or stable)     -> 404
  3. per-item `scorer.validate`, before anything is queued    -> 422
  4. cache lookups; only misses are queued on the version's batcher  -> 429 when full
  5. waiting for the items until the request's deadline       -> 504
  6. caching the new outputs, recording scores per version, metrics and one access-log line.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from typing import Any, Mapping, Optional

from rlhf_jax.serving import errors
from rlhf_jax.serving import structured_log
from rlhf_jax.serving.batcher import Batcher
from rlhf_jax.serving.cache import ScoreCache
from rlhf_jax.serving.config import ServingConfig
from rlhf_jax.serving.metrics import ServingMetrics
from rlhf_jax.serving.registry import ModelEntry, ModelRegistry
from rlhf_jax.serving.scorer import InputTooLongError, Scorer

_ACCESS = logging.getLogger(structured_log.ACCESS_LOGGER)
_EVENTS = logging.getLogger(structured_log.EVENT_LOGGER)
_SCORE_FIELDS = ("model", "prompts", "responses", "version", "request_id", "routing_key",
                 "timeout_ms")
_MAX_ID_CHARS = 200


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
  """A validated /v1/score body."""

  model: str
  prompts: list[str]
  responses: list[str]
  version: Optional[str]
  request_id: str
  routing_key: str
  timeout_s: float


def _optional_str(body: Mapping[str, Any], field: str) -> Optional[str]:
  value = body.get(field)
  if value is not None and (not isinstance(value, str) or not value
                            or len(value) > _MAX_ID_CHARS):
    raise errors.InvalidRequest(f"field {field!r} must be a non-empty string of at most "
                                f"{_MAX_ID_CHARS} characters, got {value!r:.80}")
  return value


def parse_score_request(body: Any, config: ServingConfig) -> ScoreRequest:
  """Checks a decoded JSON body against the schema and the limits; names the offending field."""
  if not isinstance(body, dict):
    raise errors.InvalidRequest(f"the body must be a JSON object, got {type(body).__name__}")
  unknown = sorted(set(body) - set(_SCORE_FIELDS))
  if unknown:
    raise errors.InvalidRequest(f"unknown field(s) {unknown}; allowed: {list(_SCORE_FIELDS)}")
  model = body.get("model")
  if not isinstance(model, str) or not model:
    raise errors.InvalidRequest(f"field 'model' must be a non-empty string, got {model!r:.80}")
  lists = {}
  for field in ("prompts", "responses"):
    value = body.get(field)
    if not isinstance(value, list):
      raise errors.InvalidRequest(f"field {field!r} must be a list of strings, got "
                                  f"{type(value).__name__}")
    lists[field] = value
  prompts, responses = lists["prompts"], lists["responses"]
  if len(prompts) != len(responses):
    raise errors.InvalidRequest(f"'prompts' has {len(prompts)} items but 'responses' has "
                                f"{len(responses)}")
  if not prompts:
    raise errors.InvalidRequest("'prompts' and 'responses' are empty; send at least one item")
  limit = config.limits.max_items_per_request
  if len(prompts) > limit:
    raise errors.BatchTooLarge(f"request has {len(prompts)} items, over the limit of {limit} "
                               "(limits.max_items_per_request); split it")
  max_chars = config.limits.max_text_chars
  for field, values in lists.items():
    for i, text in enumerate(values):
      if not isinstance(text, str):
        raise errors.InvalidRequest(f"{field}[{i}] must be a string, got {type(text).__name__}")
      if len(text) > max_chars:
        raise errors.InputTooLong(f"{field}[{i}] has {len(text)} characters, over the limit of "
                                  f"{max_chars} (limits.max_text_chars)")
  timeout_ms = body.get("timeout_ms", config.batching.default_timeout_ms)
  if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, (int, float)) or timeout_ms <= 0:
    raise errors.InvalidRequest(f"field 'timeout_ms' must be a positive number, got {timeout_ms!r}")
  request_id = _optional_str(body, "request_id") or uuid.uuid4().hex
  return ScoreRequest(
      model=model, prompts=prompts, responses=responses, version=_optional_str(body, "version"),
      request_id=request_id, routing_key=_optional_str(body, "routing_key") or request_id,
      timeout_s=min(float(timeout_ms), config.batching.max_timeout_ms) / 1000.0)


class RewardService:
  """Routing, caching and batching over a `ModelRegistry` (see the module docstring)."""

  def __init__(self, registry: ModelRegistry, config: ServingConfig,
               metrics: Optional[ServingMetrics] = None, loader: Optional[Any] = None):
    self.registry = registry
    self.config = config
    self.metrics = metrics or ServingMetrics()
    self.loader = loader  # ModelSpec -> Scorer, for the admin "load a version" route
    self.cache = ScoreCache(config.cache_max_entries)
    self.metrics.watch_cache(lambda: self.cache.hit_rate, lambda: len(self.cache))
    self._batchers: dict[tuple[str, str], Batcher] = {}
    self._started = False

  # Life cycle ---------------------------------------------------------------------------------

  async def start(self) -> None:
    """Starts one batcher per loaded version (on the running event loop)."""
    for entry in self.registry.entries():
      self._start_batcher(entry.scorer)
    self._started = True
    self._refresh_canary_gauges()
    structured_log.log_event(_EVENTS, "started", models=self.registry.describe())

  async def stop(self) -> None:
    self._started = False
    batchers, self._batchers = list(self._batchers.values()), {}
    await asyncio.gather(*(b.stop() for b in batchers))

  @property
  def ready(self) -> bool:
    """True when started and every loaded version has a running batcher."""
    return self._started and all(
        (e.name, e.version) in self._batchers and self._batchers[(e.name, e.version)].running
        for e in self.registry.entries())

  def _start_batcher(self, scorer: Scorer) -> None:
    b = self.config.batching
    labels = (scorer.name, scorer.version)

    def on_batch(size: int, seconds: float) -> None:
      self.metrics.batch_size.labels(*labels).observe(size)
      self.metrics.batch_seconds.labels(*labels).observe(seconds)

    batcher = Batcher(
        scorer, max_batch_size=b.max_batch_size, max_wait_s=b.max_wait_ms / 1000.0,
        max_queue_items=b.max_queue_items, on_batch=on_batch,
        on_depth=lambda depth: self.metrics.queue_depth.labels(*labels).set(depth))
    batcher.start()
    self._batchers[labels] = batcher

  def batcher(self, name: str, version: str) -> Batcher:
    return self._batchers[(name, version)]

  # Scoring ------------------------------------------------------------------------------------

  def _validate_items(self, entry: ModelEntry, request: ScoreRequest) -> None:
    for i, (prompt, response) in enumerate(zip(request.prompts, request.responses)):
      try:
        entry.scorer.validate(prompt, response)
      except InputTooLongError as e:
        raise errors.InputTooLong(f"item {i}: {e}") from None
      except ValueError as e:
        raise errors.InvalidInput(f"item {i}: {e}") from None

  async def score(self, request: ScoreRequest) -> dict[str, Any]:
    """Scores a validated request; raises ServingError on any failure."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + request.timeout_s
    if not self._started:
      raise errors.NotReady("the server is not ready")
    entry = self.registry.route(request.model, request.version, request.routing_key)
    self._validate_items(entry, request)
    name, version = entry.name, entry.version
    results: list[Optional[dict[str, float]]] = []
    misses = []
    for i, (prompt, response) in enumerate(zip(request.prompts, request.responses)):
      cached = self.cache.get(version, prompt, response)
      results.append(cached)
      if cached is None:
        misses.append(i)
    hits = len(results) - len(misses)
    self.metrics.cache_hits.inc(hits)
    self.metrics.cache_misses.inc(len(misses))
    if misses:
      batcher = self._batchers.get((name, version))
      if batcher is None:
        raise errors.NotReady(f"model {name!r} version {version!r} is not serving yet")
      futures = batcher.submit([request.prompts[i] for i in misses],
                               [request.responses[i] for i in misses], deadline)
      try:
        done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
      finally:
        for future in futures:
          if not future.done():
            future.cancel()  # the batcher skips cancelled items: a late request wastes no compute
      failures = [f.exception() for f in futures if f in done and f.exception() is not None]
      if pending:
        raise errors.DeadlineExceeded(
            f"deadline of {request.timeout_s * 1000:.0f} ms exceeded with {len(pending)} of "
            f"{len(misses)} items not scored; retry, or raise timeout_ms")
      if failures:
        first = failures[0]
        if isinstance(first, errors.ServingError):
          raise type(first)(f"{len(failures)} of {len(misses)} items failed; first: "
                            f"{first.message}", retry_after_s=first.retry_after_s)
        raise errors.ScorerFailed(f"{len(failures)} items failed; first: {first!r}")
      for i, future in zip(misses, futures):
        results[i] = future.result()
        self.cache.put(version, request.prompts[i], request.responses[i], results[i])
    self.metrics.items.labels(name, version, "cache").inc(hits)
    self.metrics.items.labels(name, version, "model").inc(len(misses))
    scores = [r["score"] for r in results]
    entry.stats.add(scores)
    self.metrics.observe_scores(name, version, scores)
    keys = [k for k in results[0] if k != "score" and all(k in r for r in results)]
    return {"request_id": request.request_id, "model": name, "version": version,
            "scores": scores, "outputs": {k: [r[k] for r in results] for k in keys},
            "num_cached": hits}

  # Versions and rollout -----------------------------------------------------------------------

  def _refresh_canary_gauges(self) -> None:
    for model in self.registry.describe():
      self.metrics.canary_fraction.labels(model["name"]).set(model["canary_fraction"])

  async def add_version(self, scorer: Scorer, role: str = "standby",
                        canary_fraction: float = 0.0) -> dict[str, Any]:
    """Loads `scorer` next to the existing versions and starts its batcher."""
    self.registry.add(scorer, role=role, canary_fraction=canary_fraction)
    self._start_batcher(scorer)
    self._refresh_canary_gauges()
    structured_log.log_event(_EVENTS, "version loaded", model=scorer.name,
                             version=scorer.version, role=role, canary_fraction=canary_fraction)
    return self.describe(scorer.name)

  async def load_version(self, spec: Any, role: str, canary_fraction: float) -> dict[str, Any]:
    """Builds a scorer with the configured loader (off the event loop) and adds it."""
    if self.loader is None:
      raise errors.AdminDisabled("this server has no model loader")
    try:
      scorer = await asyncio.get_running_loop().run_in_executor(None, self.loader, spec)
    except NotImplementedError as e:
      raise errors.InvalidRequest(f"cannot load {spec.name!r}: {e}") from None
    except (OSError, ValueError) as e:
      raise errors.InvalidRequest(f"loading {spec.name!r} failed: {e}") from None
    return await self.add_version(scorer, role=role, canary_fraction=canary_fraction)

  async def remove_version(self, name: str, version: str) -> dict[str, Any]:
    self.registry.remove(name, version)
    batcher = self._batchers.pop((name, version), None)
    if batcher is not None:
      await batcher.stop()
    try:
      self.metrics.queue_depth.remove(name, version)
    except KeyError:  # the version never reported a depth
      pass
    structured_log.log_event(_EVENTS, "version removed", model=name, version=version)
    return self.describe(name)

  def set_canary(self, name: str, version: str, fraction: float) -> dict[str, Any]:
    self.registry.set_canary(name, version, fraction)
    self._refresh_canary_gauges()
    structured_log.log_event(_EVENTS, "canary set", model=name, version=version,
                             fraction=fraction)
    return self.describe(name)

  def promote(self, name: str) -> dict[str, Any]:
    previous = self.registry.promote(name)
    self._refresh_canary_gauges()
    structured_log.log_event(_EVENTS, "canary promoted", model=name, previous_stable=previous,
                             stable=self.registry.get(name).version)
    return self.describe(name)

  def rollback(self, name: str) -> dict[str, Any]:
    canary = self.registry.rollback(name)
    self._refresh_canary_gauges()
    structured_log.log_event(_EVENTS, "canary rolled back", model=name, canary=canary)
    return self.describe(name)

  def set_stable(self, name: str, version: str) -> dict[str, Any]:
    self.registry.set_stable(name, version)
    self._refresh_canary_gauges()
    structured_log.log_event(_EVENTS, "stable set", model=name, version=version)
    return self.describe(name)

  def describe(self, name: Optional[str] = None) -> Any:
    models = self.registry.describe()
    for model in models:
      for v in model["versions"]:
        batcher = self._batchers.get((model["name"], v["version"]))
        v["queue_depth"] = batcher.depth if batcher else None
        v["serving"] = bool(batcher and batcher.running)
    if name is None:
      return models
    self.registry.get(name)  # UnknownModel (404) for a name that is not loaded
    return next(m for m in models if m["name"] == name)

  def log_request(self, request_id: str, status: int, latency_s: float, **fields: Any) -> None:
    structured_log.log_event(_ACCESS, "request", request_id=request_id, status=status,
                             latency_ms=round(latency_s * 1000.0, 3), **fields)
