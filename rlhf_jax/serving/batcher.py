"""Asynchronous dynamic batcher: one bounded queue and one scoring thread per model version.

Requests put already-validated items on the queue and await one future per item. A loop on the
event loop collects a batch: it waits for the first item, then up to `max_wait_s` after that
item's arrival for more, and takes at most `max_batch_size` items. The scorer runs in a
dedicated single worker thread, so the event loop keeps accepting requests while a batch runs and
batches of one version never overlap.

Isolation, so one request never poisons another:
  * items are validated by the caller before they are queued;
  * the queue is bounded in items; a request that does not fit is refused whole (QueueFull, 429)
    rather than partly queued;
  * an item whose request gave up (deadline passed, client gone) is skipped, not scored;
  * when score_batch raises for a batch of several items, each item is re-scored alone, so only
    the item that fails gets the error; an item with a non-finite output fails alone.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import time
from typing import Callable, Optional

import numpy as np

from rlhf_jax.serving import errors
from rlhf_jax.serving.scorer import Scorer, check_outputs

_LOG = logging.getLogger("rlhf_jax.serving")

@dataclasses.dataclass
class _Item:
  prompt: str
  response: str
  future: asyncio.Future
  enqueued_at: float  # event-loop time
  deadline: float  # event-loop time after which the item is not worth scoring


class Batcher:
  """Dynamic batcher for one scorer (see the module docstring).

  Args:
    scorer: the model version to run.
    max_batch_size: largest batch (capped by scorer.max_batch_size).
    max_wait_s: how long the first item of a batch waits for company.
    max_queue_items: items allowed to wait; beyond it submit raises QueueFull.
    on_batch: called on the event loop after each batch with (batch size, seconds in scorer).
    on_depth: called with the queue depth whenever it changes.
  """

  def __init__(self, scorer: Scorer, *, max_batch_size: int, max_wait_s: float,
               max_queue_items: int, on_batch: Optional[Callable[[int, float], None]] = None,
               on_depth: Optional[Callable[[int], None]] = None):
    if max_batch_size < 1 or max_queue_items < 1 or max_wait_s < 0:
      raise ValueError(f"need max_batch_size >= 1, max_queue_items >= 1, max_wait_s >= 0; got "
                       f"{max_batch_size}, {max_queue_items}, {max_wait_s}")
    self.scorer = scorer
    self.max_batch_size = min(max_batch_size, scorer.max_batch_size)
    self.max_wait_s = max_wait_s
    self.max_queue_items = max_queue_items
    self._on_batch = on_batch or (lambda size, seconds: None)
    self._on_depth = on_depth or (lambda depth: None)
    self._queue: collections.deque[_Item] = collections.deque()
    self._wakeup = asyncio.Event()
    self._task: Optional[asyncio.Task] = None
    self._closed = False
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=f"scorer-{scorer.name}-{scorer.version}")
    self.batches = 0  # batches run so far

  @property
  def depth(self) -> int:
    """Items waiting in the queue (including ones whose request already gave up)."""
    return len(self._queue)

  @property
  def running(self) -> bool:
    return self._task is not None and not self._task.done() and not self._closed

  def start(self) -> None:
    """Starts the batching loop on the running event loop."""
    if self._task is None:
      self._task = asyncio.get_running_loop().create_task(
          self._run(), name=f"batcher-{self.scorer.name}-{self.scorer.version}")

  async def stop(self) -> None:
    """Stops the loop; items still queued fail with NotReady (503, retryable)."""
    self._closed = True
    if self._task is not None:
      self._task.cancel()
      try:
        await self._task
      except asyncio.CancelledError:
        pass
    while self._queue:
      item = self._queue.popleft()
      if not item.future.done():
        item.future.set_exception(errors.NotReady("the server is shutting down"))
    self._on_depth(0)
    self._executor.shutdown(wait=False, cancel_futures=True)

  def submit(self, prompts: list[str], responses: list[str],
             deadline: float) -> list[asyncio.Future]:
    """Queues validated items; returns one future per item (outputs dict or ServingError).

    Raises:
      QueueFull: when the items do not all fit (nothing is queued).
      NotReady: when the batcher is stopped.
    """
    if self._closed or self._task is None:
      raise errors.NotReady(f"model {self.scorer.name!r} version {self.scorer.version!r} is not "
                            "serving")
    if len(self._queue) + len(prompts) > self.max_queue_items:
      raise errors.QueueFull(
          f"queue of model {self.scorer.name!r} version {self.scorer.version!r} is full "
          f"({len(self._queue)} of {self.max_queue_items} items waiting, request has "
          f"{len(prompts)}); retry later", retry_after_s=max(self.max_wait_s, 0.05))
    loop = asyncio.get_running_loop()
    now = loop.time()
    futures = []
    for prompt, response in zip(prompts, responses, strict=True):
      future = loop.create_future()
      self._queue.append(_Item(prompt, response, future, now, deadline))
      futures.append(future)
    self._on_depth(len(self._queue))
    self._wakeup.set()
    return futures

  async def _collect(self) -> list[_Item]:
    loop = asyncio.get_running_loop()
    while not self._queue:
      self._wakeup.clear()
      await self._wakeup.wait()
    flush_at = self._queue[0].enqueued_at + self.max_wait_s
    while len(self._queue) < self.max_batch_size:
      remaining = flush_at - loop.time()
      if remaining <= 0:
        break
      self._wakeup.clear()
      try:
        await asyncio.wait_for(self._wakeup.wait(), remaining)
      except asyncio.TimeoutError:
        break
    batch, now = [], loop.time()
    while self._queue and len(batch) < self.max_batch_size:
      item = self._queue.popleft()
      if item.future.done():  # its request gave up (deadline or disconnect): skip the work
        continue
      if item.deadline <= now:
        item.future.set_exception(errors.DeadlineExceeded(
            "the request's deadline passed while its items were queued"))
        continue
      batch.append(item)
    self._on_depth(len(self._queue))
    return batch

  async def _run(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      batch = await self._collect()
      if not batch:
        continue
      prompts = [item.prompt for item in batch]
      responses = [item.response for item in batch]
      start = time.perf_counter()
      try:
        results = await loop.run_in_executor(self._executor, self._score, prompts, responses)
      except Exception as e:  # noqa: BLE001  (the executor itself failed; keep serving)
        results = [errors.ScorerFailed(f"scoring thread failed: {e!r}")] * len(batch)
      self.batches += 1
      self._on_batch(len(batch), time.perf_counter() - start)
      for item, result in zip(batch, results):
        if item.future.done():
          continue
        if isinstance(result, errors.ServingError):
          item.future.set_exception(result)
        else:
          item.future.set_result(result)

  # Runs in the scorer thread. ---------------------------------------------------------------

  def _score(self, prompts: list[str], responses: list[str]) -> list:
    try:
      outputs = check_outputs(self.scorer.score_batch(prompts, responses), len(prompts))
    except Exception as e:  # noqa: BLE001  (a scorer bug must not take the server down)
      if len(prompts) == 1:
        _LOG.warning("scorer %s/%s failed on one item: %r", self.scorer.name,
                     self.scorer.version, e)
        return [errors.ScorerFailed(f"model {self.scorer.name!r} failed on this item: {e}")]
      # Find the culprit: score each item alone so the others still get their answers.
      return [self._score(prompts[i:i + 1], responses[i:i + 1])[0] for i in range(len(prompts))]
    results = []
    for b in range(len(prompts)):
      row = {key: float(value[b]) for key, value in outputs.items()}
      bad = sorted(key for key, value in row.items() if not np.isfinite(value))
      if bad:
        results.append(errors.ScorerFailed(
            f"model {self.scorer.name!r} returned a non-finite {', '.join(bad)} for this item"))
      else:
        results.append(row)
    return results
