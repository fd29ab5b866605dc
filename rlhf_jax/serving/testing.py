"""Test doubles for the reward-model service: a scorer that waits for a gate, a flaky front end.

Used by the serving tests and handy for checking how a trainer behaves when the reward service is
slow, overloaded or failing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from rlhf_jax.serving.config import ServingConfig
from rlhf_jax.serving.registry import ModelRegistry
from rlhf_jax.serving.scorer import HashScorer, Scorer
from rlhf_jax.serving.server import ServerThread, build_app


@dataclasses.dataclass
class GatedScorer(HashScorer):
  """A HashScorer whose score_batch blocks until `gate` is set; records every batch's size.

  `entered` is set when a batch starts waiting, so a test knows the scorer thread is busy.
  `fail_on` makes score_batch raise when any response contains it (bypassing validate), to
  check that one failing item does not fail the others of its batch.
  """

  gate_timeout_s: float = 10.0
  fail_on: str = ""

  def __post_init__(self):
    super().__post_init__()
    self.gate = threading.Event()
    self.entered = threading.Event()
    self.batch_sizes: list[int] = []

  def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
    self.batch_sizes.append(len(prompts))
    self.entered.set()
    if not self.gate.wait(self.gate_timeout_s):
      raise TimeoutError("GatedScorer gate was never opened")
    if self.fail_on and any(self.fail_on in r for r in responses):
      raise RuntimeError(f"response contains {self.fail_on!r}")
    return super().score_batch(prompts, responses)


class FailFirst:
  """ASGI wrapper answering the first `failures` requests to `path` with `status`.

  Example: FailFirst(app, failures=2, status=503) makes a client's first two attempts fail.
  """

  def __init__(self, app: Any, *, failures: int, status: int = 503, path: str = "/v1/score",
               retry_after: str = ""):
    self.app, self.failures, self.status, self.path = app, failures, status, path
    self.retry_after = retry_after
    self.seen = 0  # requests to `path` so far

  async def __call__(self, scope, receive, send):
    if scope["type"] == "http" and scope["path"] == self.path:
      self.seen += 1
      if self.seen <= self.failures:
        body = json.dumps({"error": {"kind": "injected", "message": "injected failure"}}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        if self.retry_after:
          headers.append((b"retry-after", self.retry_after.encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await self.app(scope, receive, send)


@contextlib.contextmanager
def running_server(*scorers: Scorer, wrap: Optional[Any] = None,
                   **config_fields: Any) -> Iterator[ServerThread]:
  """A real server on a free loopback port serving `scorers` (the first of each name is stable).

  `config_fields` are ServingConfig fields; `wrap(app)` may wrap the ASGI app (e.g. FailFirst).
  """
  config = ServingConfig(**config_fields)
  registry = ModelRegistry(seed=config.routing_seed, stats_window=config.stats_window)
  for scorer in scorers:
    registry.add(scorer)
  app = build_app(config, registry)
  with ServerThread(wrap(app) if wrap else app) as server:
    yield server
