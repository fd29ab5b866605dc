"""Run paths that may live on a local disk or in a bucket (`gs://`, `s3://`), through `etils.epath`.

`pathlib.Path("gs://bucket/run")` silently becomes `gs:/bucket/run` (and `.absolute()` prefixes
the current directory), so every path a run writes (workdir, checkpoints, artifacts, metrics) goes
through `as_path`, which returns an `epath.Path`: local paths are made absolute, bucket URIs are
kept as they are. Orbax accepts `epath.Path` directly; reading `gs://` with epath needs `gcsfs`
(installed on TPU VMs by scripts/tpu/install.sh).

Buckets differ from disks in two ways that matter here: objects cannot be appended to, and
"renaming" a directory copies it. `is_remote` lets writers pick the right strategy.
"""
from __future__ import annotations

import os
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]
_URI_SCHEMES = ("gs://", "s3://", "az://", "hf://")


def is_remote(path: PathLike) -> bool:
  """True for bucket URIs (`gs://...`), false for local paths."""
  return os.fspath(path).startswith(_URI_SCHEMES)


def as_path(path: PathLike) -> epath.Path:
  """`path` as an `epath.Path`: absolute when local, unchanged when a bucket URI.

  Example:
    >>> str(as_path("gs://bucket/runs/sft"))
    'gs://bucket/runs/sft'
  """
  if isinstance(path, str) and not path:
    raise ValueError("empty path")
  result = epath.Path(path)
  return result if is_remote(path) else result.absolute()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
  """Writes a whole file so that readers never see half of it.

  Locally: a temporary sibling, then an atomic rename. In a bucket an object only becomes visible
  once its upload is complete, so it is written directly.
  """
  path = as_path(path)
  if is_remote(path):
    path.write_bytes(data)
    return
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    tmp.write_bytes(data)
    os.replace(os.fspath(tmp), os.fspath(path))
  finally:
    if tmp.exists():
      tmp.unlink()


def atomic_write_text(path: PathLike, text: str) -> None:
  """`atomic_write_bytes` of UTF-8 text."""
  atomic_write_bytes(path, text.encode("utf-8"))
