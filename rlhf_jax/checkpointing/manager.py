"""Checkpoint manager: Orbax saves of train state, data position, RNG, config and metadata together.

One checkpoint is one Orbax step directory `<directory>/<step>/` with three items:

  state     the TrainState arrays (`ocp.args.StandardSave`), restored onto an abstract sharded
            target, which may live on a different mesh than the one that saved it;
  extras    JSON: the step, the PRNG key (`jax.random.key_data` + implementation name), the data
            iterator position (JSON, str, or bytes as base64) and the step's metrics;
  metadata  JSON: config, seed, dataset ids, code version, and the content hash / artifact id
            (`artifacts.content_hash` over {"rng": key data, "state": state} plus the config).

Retention keeps the last `max_to_keep` checkpoints plus, with `keep_best_metric`, the best one by
that metric (Orbax `LatestN` OR `BestN(n=1)` preservation policies).

Saves are asynchronous: `save` returns after the device-to-host copy; the write and the atomic
rename of `<step>.orbax-checkpoint-tmp` to `<step>` finish in a background thread. A process killed
mid-save leaves only the tmp directory: it is reported as partial and removed when the next manager
opens the directory. A step directory that is committed but cannot be read back (files missing or
corrupt, or, with `verify_hash`, bytes that no longer match the content hash) is reported, moved to
`<directory>/_quarantine/`, and `restore_latest` falls back to the previous complete checkpoint.

Multi-host: every process calls `save` / `restore` (Orbax writes each host's shards and the JSON
items from the primary host only). The directory may be a bucket URI (`gs://...`, `paths.as_path`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from rlhf_jax.checkpointing import artifacts, paths

logger = logging.getLogger(__name__)

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's marker of an uncommitted (in-progress) save
COMMIT_FILE = "commit_success.txt"  # written by Orbax into a step directory right before commit
QUARANTINE = "_quarantine"
_ITEMS = ("state", "extras", "metadata")


@dataclasses.dataclass
class CheckpointExtras:
  """Everything restored besides the train state."""

  step: int
  rng_key: Optional[jax.Array]  # as saved: a typed key or a raw uint32 key
  data_iter_state: Any  # as given to `save` (bytes, str or JSON value)
  config: Any  # JSON form of the config
  metadata: dict[str, Any]  # the full metadata block (content hash, code version, ...)
  metrics: dict[str, float]


def _encode_rng(key: Optional[jax.Array]) -> Optional[dict[str, Any]]:
  if key is None:
    return None
  typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  data = np.asarray(jax.random.key_data(key) if typed else key)
  impl = str(jax.random.key_impl(key)) if typed else None
  return {"typed": typed, "impl": impl, "shape": list(data.shape), "dtype": data.dtype.name,
          "data": data.reshape(-1).tolist()}


def _decode_rng(stored: Optional[Mapping[str, Any]]) -> Optional[jax.Array]:
  if stored is None:
    return None
  data = np.asarray(stored["data"], dtype=stored["dtype"]).reshape(stored["shape"])
  if stored["typed"]:
    return jax.random.wrap_key_data(data, impl=stored["impl"])
  return jnp.asarray(data)


def _hashed_tree(state: Any, rng_key: Optional[jax.Array]) -> dict[str, Any]:
  rng = None if rng_key is None else np.asarray(
      jax.random.key_data(rng_key) if jax.dtypes.issubdtype(rng_key.dtype, jax.dtypes.prng_key)
      else rng_key)
  return {"rng": rng, "state": state}


class CheckpointManager:
  """Saves and restores complete training checkpoints under one directory (module docstring)."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3,
               keep_best_metric: Optional[str] = None, best_mode: str = "max",
               async_save: bool = True, name: str = "checkpoint", compute_hash: bool = True,
               verify_hash: bool = False):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: where step directories live (e.g. `<workdir>/checkpoints`).
      max_to_keep: the number of most recent checkpoints kept.
      keep_best_metric: metric name (as passed in `save(metrics=...)`); the best checkpoint by it
        is kept in addition to the last `max_to_keep`.
      best_mode: "max" or "min": which end of `keep_best_metric` is best.
      async_save: write in a background thread (`save` returns after the device-to-host copy).
      name: artifact name used in the artifact id.
      compute_hash: compute the content hash at save time (one extra device-to-host copy).
      verify_hash: recompute the hash on restore and treat a mismatch as a corrupt checkpoint.
    """
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    self._directory = paths.as_path(directory)
    self._keep_best_metric = keep_best_metric
    self._best_mode = best_mode
    self._name = name
    self._compute_hash = compute_hash
    self._verify_hash = verify_hash
    self.partial_checkpoints: list[epath.Path] = self._find_partial_saves()
    self.skipped_steps: list[int] = []

    policies = [checkpoint_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if keep_best_metric is not None:
      worst = float("-inf") if best_mode == "max" else float("inf")
      # Checkpoints saved before `keep_best_metric` was configured lack it: they rank last.
      best_fn = lambda metrics: float(metrics.get(keep_best_metric, worst))  # pylint: disable=unnecessary-lambda-assignment
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=best_fn, reverse=(best_mode == "min"), n=1,
          keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=best_fn,  # only makes Orbax write the metrics item; retention is the policy above
        best_mode=best_mode,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self._directory, options=options, item_names=_ITEMS)

  @property
  def directory(self) -> epath.Path:
    return self._directory

  def _find_partial_saves(self) -> list[epath.Path]:
    if not self._directory.is_dir():
      return []
    partial = sorted(p for p in self._directory.iterdir() if TMP_SUFFIX in p.name)
    for path in partial:
      logger.warning("Partial checkpoint %s: its save was interrupted before commit; skipping it "
                     "(it is removed) and resuming from the last complete checkpoint.", path)
      if jax.process_index() == 0:  # removed here, not left to Orbax's background clean-up
        try:
          path.rmtree()
        except FileNotFoundError:
          pass
    return partial

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def best_step(self) -> Optional[int]:
    """The best step by `keep_best_metric` among the retained checkpoints (None without one)."""
    if self._keep_best_metric is None:
      return None
    scored = []
    for step in self.all_steps():
      metrics = self._manager.metrics(step)
      if metrics and self._keep_best_metric in metrics:
        scored.append((float(metrics[self._keep_best_metric]), step))
    if not scored:
      return None
    return (max(scored) if self._best_mode == "max" else min(scored))[1]

  def save(self, step: int, state: Any, *, data_iter_state: Any = None,
           rng_key: Optional[jax.Array] = None, config: Any = None,
           metadata: Optional[Mapping[str, Any]] = None,
           metrics: Optional[Mapping[str, Any]] = None) -> bool:
    """Starts saving a checkpoint at `step` (asynchronous unless `async_save=False`).

    Args:
      step: the checkpoint's step, normally `int(state.step)`.
      state: pytree of jax.Arrays (a TrainState).
      data_iter_state: data-iterator position after the batches of steps < `step` (bytes, str or
        a JSON value, e.g. grain's `iterator.get_state()`).
      rng_key: the run's base PRNG key.
      config: the run config (ConfigDict, dataclass or mapping).
      metadata: more metadata: "seed", "dataset_ids" and any JSON-able entries.
      metrics: scalar metrics of this step; `keep_best_metric` ranks checkpoints by them.

    Returns:
      Whether Orbax accepted the save.
    """
    step = int(step)
    metrics_json = artifacts.to_jsonable(dict(metrics or {}), field="metrics")
    metadata = dict(metadata or {})
    block = artifacts.build_metadata(
        config=config, seed=metadata.pop("seed", None),
        dataset_ids=metadata.pop("dataset_ids", ()), name=self._name, extra=metadata)
    block["step"] = step
    if self._compute_hash:
      digest = artifacts.content_hash(_hashed_tree(state, rng_key), block["config"])
      block["content_hash"] = f"sha256:{digest}"
      block["artifact_id"] = artifacts.artifact_id(self._name, digest)
    extras = {"step": step, "rng": _encode_rng(rng_key),
              "data_iter_state": artifacts.encode_iterator_state(data_iter_state),
              "metrics": metrics_json}
    orbax_metrics = None
    if self._keep_best_metric is not None:
      value = metrics_json.get(self._keep_best_metric)
      if isinstance(value, (int, float)) and np.isfinite(value):
        orbax_metrics = {self._keep_best_metric: float(value)}
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                extras=ocp.args.JsonSave(extras),
                                metadata=ocp.args.JsonSave(block)),
        metrics=orbax_metrics)

  def read_metadata(self, step: int) -> dict[str, Any]:
    """The metadata block of a checkpoint, without reading its arrays."""
    restored = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    return dict(restored.metadata)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, CheckpointExtras]:
    """Restores checkpoint `step` onto `abstract_state` (ShapeDtypeStructs with shardings).

    Raises:
      ValueError: naming the step directory when it is incomplete or (with `verify_hash`) its
        content hash does not match.
    """
    step_dir = self._directory / str(step)
    if not (step_dir / COMMIT_FILE).exists():
      raise ValueError(f"checkpoint {step_dir} is incomplete: no {COMMIT_FILE}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        extras=ocp.args.JsonRestore(),
        metadata=ocp.args.JsonRestore()))
    extras, metadata = dict(restored.extras), dict(restored.metadata)
    rng_key = _decode_rng(extras.get("rng"))
    if self._verify_hash and "content_hash" in metadata:
      digest = artifacts.content_hash(_hashed_tree(restored.state, rng_key), metadata["config"])
      if f"sha256:{digest}" != metadata["content_hash"]:
        raise ValueError(f"checkpoint {step_dir}: content hash sha256:{digest} does not match the "
                         f"saved {metadata['content_hash']}")
    return restored.state, CheckpointExtras(
        step=int(extras["step"]), rng_key=rng_key,
        data_iter_state=artifacts.decode_iterator_state(extras.get("data_iter_state")),
        config=metadata.get("config"), metadata=metadata, metrics=dict(extras.get("metrics") or {}))

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[Any, CheckpointExtras]]:
    """Restores the newest readable checkpoint; None when there is none.

    Unreadable checkpoints are reported, moved to `_quarantine/` (so their step can be saved
    again) and skipped in favour of the previous one.
    """
    self._manager.reload()
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-exception-caught  (any failure: fall back)
        logger.warning("Checkpoint at step %d in %s is partial or unreadable (%s: %s); skipping it "
                       "and falling back to the previous complete checkpoint.",
                       step, self._directory, type(e).__name__, str(e).splitlines()[0][:300])
        self.skipped_steps.append(step)
        self._quarantine(step)
    return None

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      source = self._directory / str(step)
      if source.exists():
        target = self._directory / QUARANTINE / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
          source.rename(target)  # a rename on disk; a bucket "rename" copies, which may fail
          logger.warning("Moved unreadable checkpoint %s to %s", source, target)
        except OSError as e:
          source.rmtree()
          logger.warning("Deleted unreadable checkpoint %s (could not move it: %s)", source, e)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"checkpoint_quarantine_{step}")
    self._manager.reload()

  def delete(self, step: int) -> None:
    """Deletes the checkpoint at `step` (waiting for any save in flight first)."""
    self.wait()
    if step not in self.all_steps():
      raise ValueError(f"no checkpoint at step {step} in {self._directory}; have {self.all_steps()}")
    self._manager.delete(step)

  def wait(self) -> None:
    """Blocks until the pending asynchronous save has been committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's resources."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "CheckpointManager":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
