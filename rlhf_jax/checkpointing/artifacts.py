"""Artifact identity: content hashes, code versions and the metadata every checkpoint carries.

A checkpoint is an artifact other runs consume (a reward model scored by PPO, a policy evaluated
by a judge). It must say what it is: the config that produced it, the seed, the dataset ids, the
code version (git SHA (Secure Hash Algorithm) commit when the code runs from a checkout, else the
installed package version) and a content hash that changes whenever a single saved bit changes.

Content hash definition (stable across processes, meshes and Python versions):

  sha256( for each array leaf, in the order of `jax.tree_util.tree_flatten_with_path` (dict keys
          sorted, dataclass fields in declaration order):
            utf8(keystr(path)) || utf8(dtype name) || utf8(shape as "a,b,c") || little-endian C-order
            bytes of the array (typed PRNG keys are hashed through `jax.random.key_data`),
          then utf8(canonical JSON of the config: sorted keys, no spaces) )

Fields are separated by a zero byte so that concatenations cannot collide. The artifact id is
`"<name>-<first 16 hex digits of the hash>"`. Sharding does not enter the hash: the same
parameters saved from a (2, 2, 2) mesh and from one device hash alike.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import functools
import hashlib
import importlib.metadata
import json
import pathlib
import subprocess
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

PACKAGE_NAME = "rlhf_jax"
_SEP = b"\x00"


def to_jsonable(value: Any, *, field: str = "value") -> Any:
  """Converts configs and small host values to plain JSON types (tuples -> lists, dtypes -> str).

  Accepts `ml_collections.ConfigDict` (anything with `to_dict`), dataclasses, mappings, sequences,
  NumPy / JAX scalars and dtypes. Raises TypeError naming `field` (dotted path) for anything else.
  """
  if hasattr(value, "to_dict") and callable(value.to_dict):
    value = value.to_dict()
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    value = dataclasses.asdict(value)
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, np.bool_):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    return float(value)
  if isinstance(value, enum.Enum):
    return to_jsonable(value.value, field=field)
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v, field=f"{field}.{k}") for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v, field=f"{field}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, (np.ndarray, jax.Array)) and value.ndim == 0:
    return to_jsonable(value.item(), field=field)
  if isinstance(value, (np.dtype, type)):
    try:
      return np.dtype(value).name  # float32, jnp.bfloat16, np.int32 ...
    except TypeError:
      pass
  if isinstance(value, pathlib.PurePath):
    return str(value)
  raise TypeError(f"{field}: cannot store {type(value).__name__} in checkpoint JSON: {value!r}")


def canonical_json(value: Any) -> str:
  """JSON with sorted keys and no whitespace, the form that enters the content hash."""
  return json.dumps(to_jsonable(value, field="config"), sort_keys=True, separators=(",", ":"))


def _host_array(x: Any) -> np.ndarray:
  """Gathers one leaf to a host NumPy array (all processes take part for non-addressable arrays)."""
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


def content_hash(tree: Any, config: Any = None) -> str:
  """sha256 hex digest of the arrays of `tree` in canonical order, plus the config (module doc).

  Fetches every leaf to the host, so it costs one device-to-host copy of the tree.
  """
  digest = hashlib.sha256()
  leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(tree)
  for path, leaf in leaves_with_paths:
    array = np.ascontiguousarray(_host_array(leaf))
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("<"))
    digest.update(jax.tree_util.keystr(path).encode() + _SEP)
    digest.update(array.dtype.name.encode() + _SEP)
    digest.update(",".join(str(d) for d in array.shape).encode() + _SEP)
    digest.update(array.tobytes(order="C") + _SEP)
  if config is not None:
    digest.update(canonical_json(config).encode())
  return digest.hexdigest()


def artifact_id(name: str, digest: str) -> str:
  """Short stable identifier of an artifact: `<name>-<16 hex digits of its content hash>`."""
  return f"{name}-{digest[:16]}"


@functools.lru_cache(maxsize=None)
def code_version() -> str:
  """`git:<sha>[-dirty]` when this package runs from a git checkout, else `<package>==<version>`."""
  root = pathlib.Path(__file__).resolve().parents[2]
  try:
    sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    if sha:
      return f"git:{sha}{'-dirty' if dirty else ''}"
  except (OSError, subprocess.SubprocessError):
    pass
  try:
    return f"{PACKAGE_NAME}=={importlib.metadata.version(PACKAGE_NAME)}"
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def build_metadata(*, config: Any = None, seed: Optional[int] = None,
                   dataset_ids: Sequence[str] = (), name: str = "checkpoint",
                   extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """The metadata block stored next to a checkpoint (the content hash is added at save time)."""
  metadata = {
      "name": name,
      "config": to_jsonable(config, field="config") if config is not None else None,
      "seed": None if seed is None else int(seed),
      "dataset_ids": [str(d) for d in dataset_ids],
      "code_version": code_version(),
      "jax_version": jax.__version__,
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  if extra:
    metadata.update(to_jsonable(dict(extra), field="metadata"))
  return metadata


def encode_iterator_state(state: Any) -> Any:
  """Makes a data-iterator position JSON-storable (bytes are base64-wrapped, str/JSON kept)."""
  if isinstance(state, (bytes, bytearray)):
    return {"__bytes_b64__": base64.b64encode(bytes(state)).decode("ascii")}
  return to_jsonable(state, field="data_iter_state")


def decode_iterator_state(stored: Any) -> Any:
  """Inverse of `encode_iterator_state`."""
  if isinstance(stored, Mapping) and set(stored) == {"__bytes_b64__"}:
    return base64.b64decode(stored["__bytes_b64__"])
  return stored
