"""Metric writers: JSONL (JSON Lines) file, TensorBoard event files (tensorboardX, no TensorFlow), logging.

Metrics are slash-named scalars (`loss/policy`, `kl/ref`, `rewards/chosen`); the part before the
first slash groups them in TensorBoard. Only process 0 writes: `make_writers` returns a writer that
drops everything on other processes, so callers never branch on the process index.

JSONL format, one object per line: `{"step": 12, "loss/total": 0.52, ...}`.

The workdir may be a bucket URI (`gs://...`): objects there cannot be appended to, so the JSONL
writer keeps the file's lines in memory and re-uploads the whole file at most every
`upload_every_s` seconds and on `flush()`; TensorBoard event files go through tensorboardX's own
GCS writer (needs `google-cloud-storage`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from typing import Any, Iterable, Mapping, Optional, Protocol, Sequence

import jax
import numpy as np
from etils import epath

from rlhf_jax.checkpointing import paths

logger = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


class MetricWriter(Protocol):
  """What the host loop writes to."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    ...

  def rewind(self, step: int) -> None:
    """Forgets records after `step` (called when a run resumes from a checkpoint at `step`)."""
    ...

  def flush(self) -> None:
    ...

  def close(self) -> None:
    ...


def to_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Host floats from a metrics dict; raises ValueError naming a badly named or non-scalar metric."""
  out = {}
  for name, value in metrics.items():
    if not isinstance(name, str) or not _NAME.match(name):
      raise ValueError(f"metric name {name!r} must be slash-separated words like 'loss/policy'")
    array = np.asarray(value)
    if array.size != 1:
      raise ValueError(f"metric {name!r} must be a scalar, got shape {array.shape}")
    out[name] = float(array.reshape(()))
  return out


class JsonlWriter:
  """Appends one JSON object per step to `path` (non-finite values are written as null).

  On a local disk the file is opened line-buffered in append mode, so every line survives a kill.
  In a bucket (no appends) the lines are kept in memory and the whole object is re-uploaded at
  most every `upload_every_s` seconds and on `flush()` / `close()`.
  """

  def __init__(self, path: str | os.PathLike, upload_every_s: float = 60.0):
    self._path = paths.as_path(path)
    self._remote = paths.is_remote(self._path)
    self._upload_every_s = upload_every_s
    self._last_upload = time.monotonic()
    self._lines: list[str] = []
    self._file = None
    if self._remote:
      if self._path.exists():
        self._lines = self._path.read_text(encoding="utf-8").splitlines()
    else:
      self._path.parent.mkdir(parents=True, exist_ok=True)
      self._file = open(os.fspath(self._path), "a", encoding="utf-8", buffering=1)  # line-buffered

  @property
  def path(self) -> epath.Path:
    return self._path

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    record = {"step": int(step)}
    record.update({k: (v if math.isfinite(v) else None) for k, v in scalars.items()})
    line = json.dumps(record, sort_keys=True)
    if self._file is not None:
      self._file.write(line + "\n")
      return
    self._lines.append(line)
    if time.monotonic() - self._last_upload >= self._upload_every_s:
      self.flush()

  def rewind(self, step: int) -> None:
    """Drops lines with a step after `step` (e.g. written after the checkpoint a run resumes from)."""
    if self._file is not None:
      self._file.close()
      self._lines = self._path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in self._lines:
      try:
        if int(json.loads(line)["step"]) <= step:
          kept.append(line)
      except (ValueError, KeyError, TypeError):
        continue  # a torn last line from a killed run
    self._lines = kept
    if self._file is not None:
      self._path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
      self._lines = []
      self._file = open(os.fspath(self._path), "a", encoding="utf-8", buffering=1)
    else:
      self.flush()

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
      return
    self._path.write_text("".join(line + "\n" for line in self._lines), encoding="utf-8")
    self._last_upload = time.monotonic()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    else:
      self.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a metrics JSONL file back (null -> nan); raises ValueError naming file and line."""
  records = []
  with paths.as_path(path).open("r") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
      records.append({k: (math.nan if v is None else v) for k, v in record.items()})
  return records


class TensorBoardWriter:
  """Scalars to TensorBoard event files under `logdir` via tensorboardX (no TensorFlow needed)."""

  def __init__(self, logdir: str | os.PathLike):
    import tensorboardX  # pylint: disable=g-import-not-at-top  (import cost only when used)
    self._writer = tensorboardX.SummaryWriter(logdir=os.fspath(logdir))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, value, global_step=int(step))

  def rewind(self, step: int) -> None:
    del step  # TensorBoard shows the newest value written for a step

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class LoggingWriter:
  """Writes `step 12: loss/total=0.52 ...` lines to Python logging every `every` steps.

  Writes carrying evaluation results (a key starting with "eval") are logged whatever the step.
  """

  def __init__(self, every: int = 1, level: int = logging.INFO):
    self._every = max(int(every), 1)
    self._level = level

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if step % self._every == 0 or any(k.startswith("eval") for k in scalars):
      text = " ".join(f"{k}={v:.6g}" for k, v in sorted(scalars.items()))
      logger.log(self._level, "step %d: %s", step, text)

  def rewind(self, step: int) -> None:
    del step

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class MultiWriter:
  """Fans every call out to several writers."""

  def __init__(self, writers: Iterable[MetricWriter]):
    self._writers: Sequence[MetricWriter] = tuple(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for w in self._writers:
      w.write_scalars(step, scalars)

  def rewind(self, step: int) -> None:
    for w in self._writers:
      w.rewind(step)

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.close()


def make_writers(workdir: Optional[str | os.PathLike], *, jsonl: bool = True,
                 tensorboard: bool = True, log_every: int = 1) -> MultiWriter:
  """The standard writers for a run: `<workdir>/metrics.jsonl`, `<workdir>/tensorboard/`, logging.

  On processes other than 0 (or with `workdir=None`, logging only) the file writers are omitted.
  """
  writers: list[MetricWriter] = []
  if jax.process_index() == 0:
    if workdir is not None:
      workdir = paths.as_path(workdir)
      if jsonl:
        writers.append(JsonlWriter(workdir / "metrics.jsonl"))
      if tensorboard:
        writers.append(TensorBoardWriter(workdir / "tensorboard"))
    writers.append(LoggingWriter(every=log_every))
  return MultiWriter(writers)
