"""Tests for rlhf_jax/serving/batcher.py: batch formation, bounds, deadlines, isolation."""
import asyncio
import time

import numpy as np
import pytest

from rlhf_jax.serving import errors
from rlhf_jax.serving.batcher import Batcher
from rlhf_jax.serving.scorer import HashScorer
from rlhf_jax.serving.testing import GatedScorer


def _run(coro):
  return asyncio.run(asyncio.wait_for(coro, 20))


class _Recording(HashScorer):
  """HashScorer that records batch sizes (and can return NaN for one response)."""

  def __post_init__(self):
    super().__post_init__()
    self.batch_sizes = []
    self.nan_for = None
    self.bad_shape = False

  def score_batch(self, prompts, responses):
    self.batch_sizes.append(len(prompts))
    out = super().score_batch(prompts, responses)
    if self.nan_for is not None:
      out["std"] = np.where([r == self.nan_for for r in responses], np.nan, out["std"])
    if self.bad_shape:
      out["score"] = out["score"][:1]
    return out


def _batcher(scorer, **kw):
  kw = {"max_batch_size": 4, "max_wait_s": 0.0, "max_queue_items": 64, **kw}
  return Batcher(scorer, **kw)


def test_items_are_batched_up_to_the_max_and_answers_match_the_scorer():
  scorer = _Recording(name="rm")
  prompts, responses = ["p"] * 10, [f"r{i}" for i in range(10)]

  async def main():
    b = _batcher(scorer)
    b.start()
    futures = b.submit(prompts, responses, deadline=asyncio.get_running_loop().time() + 10)
    results = await asyncio.gather(*futures)
    await b.stop()
    return results

  results = _run(main())
  assert scorer.batch_sizes == [4, 4, 2]
  expected = HashScorer(name="rm").score_batch(prompts, responses)
  np.testing.assert_array_equal([r["score"] for r in results], expected["score"])
  np.testing.assert_array_equal([r["std"] for r in results], expected["std"])


def test_max_wait_gathers_late_arrivals_and_flushes_a_lone_item():
  scorer = _Recording(name="rm")

  async def main():
    loop = asyncio.get_running_loop()
    b = _batcher(scorer, max_wait_s=0.3)
    b.start()
    f1 = b.submit(["p"], ["a"], deadline=loop.time() + 10)
    await asyncio.sleep(0.05)
    f2 = b.submit(["p"], ["b"], deadline=loop.time() + 10)
    await asyncio.gather(*f1, *f2)
    start = time.perf_counter()
    await asyncio.gather(*b.submit(["p"], ["c"], deadline=loop.time() + 10))
    lone = time.perf_counter() - start
    await b.stop()
    return lone

  lone = _run(main())
  assert scorer.batch_sizes == [2, 1]  # the late arrival joined the first batch
  assert 0.25 <= lone < 2.0  # a lone item waits max_wait_s, then runs alone


def test_full_queue_refuses_the_whole_request_and_queues_nothing():
  scorer = GatedScorer(name="rm")

  async def main():
    loop = asyncio.get_running_loop()
    b = _batcher(scorer, max_batch_size=1, max_queue_items=3)
    b.start()
    running = b.submit(["p"], ["busy"], deadline=loop.time() + 10)
    while not scorer.entered.is_set():  # the scorer thread now holds "busy"
      await asyncio.sleep(0.005)
    queued = b.submit(["p", "p"], ["q1", "q2"], deadline=loop.time() + 10)
    with pytest.raises(errors.QueueFull, match="2 of 3 items waiting, request has 2") as e:
      b.submit(["p", "p"], ["x1", "x2"], deadline=loop.time() + 10)
    assert e.value.status == 429 and e.value.retry_after_s > 0
    assert b.depth == 2
    fits = b.submit(["p"], ["q3"], deadline=loop.time() + 10)  # exactly fills the queue
    scorer.gate.set()
    results = await asyncio.gather(*running, *queued, *fits)
    await b.stop()
    return results

  results = _run(main())
  assert len(results) == 4 and scorer.batch_sizes == [1, 1, 1, 1]


def test_expired_and_cancelled_items_are_never_scored():
  scorer = GatedScorer(name="rm")

  async def main():
    loop = asyncio.get_running_loop()
    b = _batcher(scorer, max_batch_size=8)
    b.start()
    blocker = b.submit(["p"], ["busy"], deadline=loop.time() + 10)
    while not scorer.entered.is_set():
      await asyncio.sleep(0.005)
    expired = b.submit(["p"], ["late"], deadline=loop.time() + 0.01)
    cancelled = b.submit(["p"], ["gone"], deadline=loop.time() + 10)
    live = b.submit(["p"], ["live"], deadline=loop.time() + 10)
    cancelled[0].cancel()  # its request gave up (e.g. the client went away)
    await asyncio.sleep(0.05)  # "late" is now past its deadline
    scorer.gate.set()
    await asyncio.gather(*blocker, *live)
    with pytest.raises(errors.DeadlineExceeded, match="deadline passed while its items were"):
      await expired[0]
    await b.stop()

  _run(main())
  assert scorer.batch_sizes == [1, 1]  # "busy", then "live" alone: "late" and "gone" skipped


def test_a_failing_item_does_not_fail_the_rest_of_its_batch():
  scorer = GatedScorer(name="rm", fail_on="POISON")
  scorer.gate.set()
  responses = ["ok1", "POISON here", "ok2"]

  async def main():
    loop = asyncio.get_running_loop()
    b = _batcher(scorer, max_batch_size=8)
    b.start()
    futures = b.submit(["p"] * 3, responses, deadline=loop.time() + 10)
    done = await asyncio.gather(*futures, return_exceptions=True)
    await b.stop()
    return done

  done = _run(main())
  expected = HashScorer(name="rm").score_batch(["p"] * 3, responses)["score"]
  assert done[0]["score"] == expected[0] and done[2]["score"] == expected[2]
  assert isinstance(done[1], errors.ScorerFailed) and "contains 'POISON'" in done[1].message
  assert scorer.batch_sizes == [3, 1, 1, 1]  # the failed batch, then each item alone


def test_non_finite_outputs_fail_only_their_item_and_bad_shapes_fail_clearly():
  scorer = _Recording(name="rm")
  scorer.nan_for = "nan-me"

  async def main(responses):
    loop = asyncio.get_running_loop()
    b = _batcher(scorer, max_batch_size=8)
    b.start()
    done = await asyncio.gather(*b.submit(["p"] * len(responses), responses, loop.time() + 10),
                                return_exceptions=True)
    await b.stop()
    return done

  done = _run(main(["a", "nan-me", "b"]))
  assert isinstance(done[1], errors.ScorerFailed) and "non-finite std" in done[1].message
  assert np.isfinite(done[0]["std"]) and np.isfinite(done[2]["std"])
  scorer.nan_for, scorer.bad_shape = None, True
  done = _run(main(["a", "b"]))
  # Re-scored alone, a batch of one has the right shape, so both items succeed.
  assert all(isinstance(d, dict) for d in done)
  scorer.bad_shape = False
  broken = _Recording(name="rm")
  broken.score_batch = lambda p, r: {"score": np.zeros(len(p) + 1)}
  scorer = broken
  done = _run(main(["a"]))
  assert isinstance(done[0], errors.ScorerFailed) and "shape (2,), expected (1,)" in done[0].message


def test_stop_fails_queued_items_and_refuses_new_ones():
  scorer = GatedScorer(name="rm", gate_timeout_s=5.0)

  async def main():
    loop = asyncio.get_running_loop()
    b = _batcher(scorer, max_batch_size=1)
    with pytest.raises(errors.NotReady, match="not serving"):
      b.submit(["p"], ["r"], loop.time() + 1)  # not started
    b.start()
    b.submit(["p"], ["busy"], loop.time() + 10)
    while not scorer.entered.is_set():
      await asyncio.sleep(0.005)
    queued = b.submit(["p"], ["waiting"], loop.time() + 10)
    await b.stop()
    scorer.gate.set()
    with pytest.raises(errors.NotReady, match="shutting down"):
      await queued[0]
    with pytest.raises(errors.NotReady):
      b.submit(["p"], ["r"], loop.time() + 1)
    assert not b.running

  _run(main())


def test_constructor_validates_and_caps_at_the_scorer_max():
  b = Batcher(HashScorer(max_batch_size=3), max_batch_size=10, max_wait_s=0.0, max_queue_items=5)
  assert b.max_batch_size == 3
  with pytest.raises(ValueError, match="max_batch_size >= 1"):
    Batcher(HashScorer(), max_batch_size=0, max_wait_s=0.0, max_queue_items=5)
