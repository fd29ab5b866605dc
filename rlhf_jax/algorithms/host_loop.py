"""The host loop shared by every algorithm: resume, step, log, evaluate, checkpoint.

Boring and fixed on purpose:

  1. log the device topology; resume from the newest complete checkpoint in the manager (train
     state, data-iterator position and base PRNG key) if there is one;
  2. for each step N: fetch a batch, dispatch `step_fn(state, batch, fold_in(base_key, N))`, and
     only THEN fetch step N-1's metrics (`jax.device_get`), so the host never waits on a step it
     could have queued behind; JAX's asynchronous dispatch keeps the device busy meanwhile;
  3. stop with `NonFiniteLossError` naming the step and the metric as soon as a metric whose name
     starts with "loss" is NaN or infinite; this check runs before every checkpoint, so a state
     produced by a non-finite step is never saved;
  4. every `eval_every` steps run `eval_fn`; every `checkpoint_every` steps and at the end save a
     checkpoint; write slash-named scalars to the metric writers and drive a progress bar with
     steps/s and tokens/s on process 0.

Step numbering: the metrics of the update that turns `state.step == s - 1` into `s` are logged at
step `s`, and the checkpoint at step `s` holds the state after `s` updates together with the data
iterator position after `s` batches, so a resumed run replays exactly the same batches and keys.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import tqdm

from rlhf_jax import sharding
from rlhf_jax.algorithms import metrics as metrics_lib
from rlhf_jax.algorithms import train_state
from rlhf_jax.checkpointing import manager as manager_lib

logger = logging.getLogger(__name__)

PyTree = Any
_RATE_WINDOW = 10  # steps over which steps/s and tokens/s are measured
StepFn = Callable[[Any, PyTree, jax.Array], tuple[Any, Mapping[str, jax.Array]]]


class NonFiniteLossError(FloatingPointError):
  """A loss metric became NaN or infinite."""

  def __init__(self, step: int, metric: str, value: float):
    self.step, self.metric, self.value = step, metric, value
    super().__init__(f"non-finite loss at step {step}: metric {metric!r} = {value}; stopping "
                     f"before the state of this step is checkpointed")


@dataclasses.dataclass
class LoopResult:
  """What `run_loop` returns."""

  state: Any  # the final train state
  history: list[dict[str, float]]  # one record per step run here: {"step": s, metric: value}
  start_step: int  # the step the loop started from (> 0 after a resume)


def check_finite_losses(step: int, scalars: Mapping[str, float]) -> None:
  """Raises NonFiniteLossError for the first metric starting with "loss" that is not finite."""
  for name in sorted(scalars):
    if name.startswith("loss") and not math.isfinite(scalars[name]):
      raise NonFiniteLossError(step, name, scalars[name])


def log_topology(mesh: Optional[jax.sharding.Mesh] = None) -> dict[str, Any]:
  """Logs (and returns) platform, device and process counts and the mesh shape."""
  info = sharding.describe_topology(mesh)
  logger.info("Device topology: %s", " ".join(f"{k}={v}" for k, v in info.items()))
  return info


def _resume(manager: manager_lib.CheckpointManager, state: Any, iterator: Any,
            base_key: jax.Array) -> tuple[Any, jax.Array, int]:
  """Restores the newest complete checkpoint onto the shardings of `state`, if any."""
  restored = manager.restore_latest(train_state.abstract_like(state))
  if restored is None:
    return state, base_key, int(jax.device_get(state.step))
  state, extras = restored
  if extras.data_iter_state is not None:
    if not hasattr(iterator, "set_state"):
      raise TypeError(f"checkpoint at step {extras.step} stores a data-iterator position but the "
                      f"batch iterator {type(iterator).__name__} has no set_state()")
    iterator.set_state(extras.data_iter_state)
  if extras.rng_key is not None:
    base_key = extras.rng_key
  logger.info("Resumed from checkpoint step %d in %s", extras.step, manager.directory)
  return state, base_key, int(jax.device_get(state.step))


def run_loop(
    *,
    state: Any,
    step_fn: StepFn,
    batches: Iterable[PyTree],
    total_steps: int,
    base_key: jax.Array,
    writer: Optional[metrics_lib.MetricWriter] = None,
    checkpoint_manager: Optional[manager_lib.CheckpointManager] = None,
    checkpoint_every: int = 0,
    eval_fn: Optional[Callable[[Any, int], Mapping[str, Any]]] = None,
    eval_every: int = 0,
    put_batch: Optional[Callable[[PyTree], PyTree]] = None,
    tokens_fn: Optional[Callable[[PyTree], int]] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
    config: Any = None,
    metadata: Optional[Mapping[str, Any]] = None,
    resume: bool = True,
    show_progress: bool = True,
) -> LoopResult:
  """Runs `step_fn` until `state.step == total_steps` (module docstring for the sequence).

  Args:
    state: initial train state (any pytree with an int `step` leaf attribute); also the restore
      target: a checkpoint is restored onto its shapes and shardings.
    step_fn: jitted `(state, batch, key) -> (state, metrics)` with scalar metrics.
    batches: iterable of host batches; its iterator needs `get_state()` / `set_state()` for
      checkpoints to record the data position.
    total_steps: the step (number of updates) at which training stops.
    base_key: PRNG key; step N receives `jax.random.fold_in(base_key, N)`.
    writer: metric writer (see `metrics.make_writers`); None writes nothing.
    checkpoint_manager: saves checkpoints and provides the resume point.
    checkpoint_every: save every this many steps (0: only at the end).
    eval_fn: `(state, step) -> metrics`, run every `eval_every` steps and at the end; its
      metrics are written with an "eval/" prefix (unless already present).
    eval_every: evaluation interval (0: never).
    put_batch: host batch -> device arrays (e.g. `functools.partial(sharding.put_batch,
      mesh=mesh)`); None passes the host batch to `step_fn` as is.
    tokens_fn: host batch -> number of tokens, for tokens/s.
    mesh: logged with the topology.
    config, metadata: stored with every checkpoint (metadata may hold "seed", "dataset_ids").
    resume: restore from the newest complete checkpoint of `checkpoint_manager` first.
    show_progress: progress bar on process 0.

  Returns:
    LoopResult with the final state, the per-step metric history and the start step.

  Raises:
    NonFiniteLossError: a "loss*" metric is NaN/inf (nothing from that step is checkpointed).
  """
  log_topology(mesh)
  writer = writer or metrics_lib.MultiWriter([])
  iterator: Iterator[PyTree] = batches if hasattr(batches, "__next__") else iter(batches)
  start = int(jax.device_get(state.step))
  if checkpoint_manager is not None and resume:
    state, base_key, start = _resume(checkpoint_manager, state, iterator, base_key)
    writer.rewind(start)  # drop records of steps after the resume point (they are re-run)
  history: list[dict[str, float]] = []
  progress = tqdm.tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True,
                       disable=not (show_progress and jax.process_index() == 0))
  window: collections.deque[tuple[float, int]] = collections.deque(maxlen=_RATE_WINDOW + 1)

  def finish(pending: tuple[int, Mapping[str, jax.Array], Optional[int]]) -> dict[str, float]:
    """Fetches one step's metrics (blocking), checks the losses, writes them."""
    step, device_metrics, tokens = pending
    scalars = metrics_lib.to_scalars(jax.device_get(device_metrics))
    check_finite_losses(step, scalars)
    window.append((time.perf_counter(), tokens or 0))
    if len(window) > 1:  # rates over the last few steps: single intervals are noisy under async
      elapsed = max(window[-1][0] - window[0][0], 1e-9)
      scalars["perf/steps_per_sec"] = (len(window) - 1) / elapsed
      if tokens is not None:
        scalars["perf/tokens_per_sec"] = sum(t for _, t in list(window)[1:]) / elapsed
    writer.write_scalars(step, scalars)
    history.append({"step": step, **scalars})
    progress.update(1)
    postfix = {k: f"{v:.4g}" for k, v in scalars.items() if k.startswith("loss")}
    if "perf/tokens_per_sec" in scalars:
      postfix["tok/s"] = f"{scalars['perf/tokens_per_sec']:.3g}"
    progress.set_postfix(postfix, refresh=False)
    return scalars

  step, pending = start, None
  try:
    while step < total_steps:
      try:
        host_batch = next(iterator)
      except StopIteration:
        raise RuntimeError(f"the batch iterator ran out before step {step + 1} of "
                           f"{total_steps}") from None
      tokens = None if tokens_fn is None else int(tokens_fn(host_batch))
      batch = host_batch if put_batch is None else put_batch(host_batch)
      state, device_metrics = step_fn(state, batch, jax.random.fold_in(base_key, step))
      if pending is not None:
        finish(pending)  # step N-1's metrics, fetched after dispatching step N
      step += 1
      pending = (step, device_metrics, tokens)
      is_last = step == total_steps
      do_eval = eval_fn is not None and eval_every > 0 and (step % eval_every == 0 or is_last)
      do_save = checkpoint_manager is not None and (
          is_last or (checkpoint_every > 0 and step % checkpoint_every == 0))
      if not (do_eval or do_save):
        continue
      last_scalars, pending = finish(pending), None
      if do_eval:
        eval_scalars = metrics_lib.to_scalars({
            (k if k.startswith("eval/") else f"eval/{k}"): v
            for k, v in jax.device_get(dict(eval_fn(state, step))).items()})
        writer.write_scalars(step, eval_scalars)
        history[-1].update(eval_scalars)
        last_scalars = {**last_scalars, **eval_scalars}
      if do_save:
        data_state = iterator.get_state() if hasattr(iterator, "get_state") else None
        checkpoint_manager.save(step, state, data_iter_state=data_state, rng_key=base_key,
                                config=config, metadata=metadata, metrics=last_scalars)
    if pending is not None:
      finish(pending)
  finally:
    progress.close()
    writer.flush()
    if checkpoint_manager is not None:
      checkpoint_manager.wait()  # commit the last save (it holds a good state)
  return LoopResult(state=state, history=history, start_step=start)
