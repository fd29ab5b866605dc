"""Reference log-probs precomputed once over a preference dataset and stored with the dataset's id.

The reference policy of a DPO-family loss (DPO = Direct Preference Optimization) is frozen, so its
summed response log-probs of every (prompt, chosen) and (prompt, rejected) pair are fixed numbers.
Computing them once before training means the reference model need not sit in memory next to the
policy during training; the step then reads them from the batch (`dpo.REF_FIELDS`).

On disk, one folder per (dataset, reference) pair:

  reference_logprobs.npz   example_ids [N] (str), ref_chosen_logp_N, ref_rejected_logp_N
                           (float32 summed log-probs at temperature 1, EOS included)
  manifest.json            {"format_version", "kind", "dataset_id", "reference_id",
                            "num_examples", "arrays_file", "content_hash", ...}

The content hash is `checkpointing.artifacts.content_hash` of the three arrays plus the ids of the
dataset and the reference, so any edited value, id or swapped file is detected on load. The
folder name is derived from both ids (`cache_directory`), so a new reference checkpoint or a new
dataset version never reuses stale numbers.

Example:
  ref = compute_reference_logprobs(ref_params, records, ref_fn=make_reference_fn(logp_fn),
                                   batch_size=8, buckets=(128,), pad_id=0,
                                   dataset_id="lab-prefs@3f2a", reference_id="sft-9c1e")
  save(cache_directory(root, ref.dataset_id, ref.reference_id), ref)
  ref = load(folder, dataset_id="lab-prefs@3f2a", reference_id="sft-9c1e")
  chosen_B, rejected_B = ref.lookup(["id-7", "id-3"])
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np

from rlhf_jax.algorithms import dpo
from rlhf_jax.checkpointing import artifacts
from rlhf_jax.data import batching

PyTree = Any
FORMAT_VERSION = 1
KIND = "dpo_reference_logprobs"
ARRAYS_FILE = "reference_logprobs.npz"
MANIFEST_FILE = "manifest.json"
RefFn = Callable[[PyTree, Mapping[str, Any]], tuple[jax.Array, jax.Array]]


class ReferenceLogProbsError(ValueError):
  """A stored reference log-prob file is missing, malformed, tampered with or for other data."""


@dataclasses.dataclass(frozen=True)
class ReferenceLogProbs:
  """Summed reference log-probs of N preference examples, keyed by example id."""

  example_ids: np.ndarray  # [N] str
  chosen_logp_N: np.ndarray  # [N] float32
  rejected_logp_N: np.ndarray  # [N] float32
  dataset_id: str
  reference_id: str
  source: str = "<memory>"  # where it was loaded from (for error messages)

  def __post_init__(self):
    ids = np.asarray(self.example_ids, dtype=str)
    object.__setattr__(self, "example_ids", ids)
    for name in ("chosen_logp_N", "rejected_logp_N"):
      value = np.asarray(getattr(self, name), np.float32)
      if value.shape != ids.shape:
        raise ReferenceLogProbsError(f"{self.source}: {name} has shape {value.shape} but there "
                                     f"are {ids.shape} example ids")
      object.__setattr__(self, name, value)
    index: dict[str, int] = {}
    for i, example_id in enumerate(ids.tolist()):
      if example_id in index:
        raise ReferenceLogProbsError(f"{self.source}: example id {example_id!r} appears twice "
                                     f"(rows {index[example_id]} and {i})")
      index[example_id] = i
    object.__setattr__(self, "_index", index)

  def __len__(self) -> int:
    return len(self.example_ids)

  def lookup(self, example_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ref_chosen_logp_B, ref_rejected_logp_B) for the given example ids, in their order."""
    index = self._index  # pylint: disable=no-member
    rows = []
    for example_id in example_ids:
      if example_id not in index:
        raise KeyError(f"example id {example_id!r} has no precomputed reference log-probs in "
                       f"{self.source} (dataset {self.dataset_id!r}, reference "
                       f"{self.reference_id!r}); recompute them for this dataset")
      rows.append(index[example_id])
    rows = np.asarray(rows, np.int64)
    return self.chosen_logp_N[rows], self.rejected_logp_N[rows]

  def content_hash(self) -> str:
    """sha256 of the arrays and both ids (the module docstring)."""
    return "sha256:" + artifacts.content_hash(
        {"example_ids": self.example_ids, "ref_chosen_logp_N": self.chosen_logp_N,
         "ref_rejected_logp_N": self.rejected_logp_N},
        {"dataset_id": self.dataset_id, "reference_id": self.reference_id})


def make_reference_fn(logp_fn: dpo.LogpFn, *, compute_dtype: Any = None) -> RefFn:
  """Jitted `(ref_params, batch) -> (chosen_B, rejected_B)`, the same pass the step runs in-step."""
  return jax.jit(functools.partial(dpo.reference_pair_logprobs, logp_fn=logp_fn,
                                   compute_dtype=compute_dtype))


def compute_reference_logprobs(ref_params: PyTree, records: Sequence[Mapping[str, Any]], *,
                               ref_fn: RefFn, batch_size: int, buckets: Sequence[int],
                               pad_id: int, dataset_id: str, reference_id: str,
                               put_batch: Optional[Callable[[Any], Any]] = None
                               ) -> ReferenceLogProbs:
  """Runs the reference over every record once, in order, `batch_size` pairs at a time.

  Args:
    ref_params: frozen reference parameters.
    records: tokenised preference records with "id", "prompt_ids", "chosen_ids", "rejected_ids"
      (the records the training loader reads).
    ref_fn: from `make_reference_fn`.
    batch_size: pairs per forward pass; the last batch is filled up by repeating its last record
      (results of the filler rows are dropped), so one shape per bucket is compiled.
    buckets: padded row lengths, as in training (`data.batching.bucket_lengths`).
    pad_id: padding token id.
    dataset_id, reference_id: identity of the data and of the reference checkpoint.
    put_batch: host batch -> device arrays (e.g. sharded); None uses `jnp` default placement.

  Returns:
    The log-probs of every record, keyed by its id.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not records:
    raise ValueError("no records to compute reference log-probs for")
  ids, chosen, rejected = [], [], []
  for start in range(0, len(records), batch_size):
    chunk = list(records[start:start + batch_size])
    real = len(chunk)
    chunk += [chunk[-1]] * (batch_size - real)
    pairs = batching.collate_preferences(chunk, buckets=buckets, pad_id=pad_id)
    batch = dpo.host_batch(pairs)
    batch = put_batch(batch) if put_batch is not None else batch
    chosen_B, rejected_B = jax.device_get(ref_fn(ref_params, batch))
    ids += [str(r.get("id", f"#{start + i}")) for i, r in enumerate(chunk[:real])]
    chosen.append(np.asarray(chosen_B)[:real])
    rejected.append(np.asarray(rejected_B)[:real])
  return ReferenceLogProbs(np.asarray(ids, dtype=str), np.concatenate(chosen),
                           np.concatenate(rejected), dataset_id=dataset_id,
                           reference_id=reference_id)


def _sanitize(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


def cache_directory(root: str | os.PathLike, dataset_id: str, reference_id: str) -> pathlib.Path:
  """`<root>/<dataset_id>__<reference_id>` (characters outside [A-Za-z0-9._-] become "_")."""
  return pathlib.Path(root) / f"{_sanitize(dataset_id)}__{_sanitize(reference_id)}"


def save(directory: str | os.PathLike, ref: ReferenceLogProbs,
         extra_metadata: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """Writes the arrays and the manifest into `directory` atomically; returns the manifest.

  The files are written into a temporary sibling folder that is renamed into place, so a killed
  process never leaves a half-written folder that `load` would accept. Only process 0 writes.
  """
  directory = pathlib.Path(directory)
  manifest = {
      "format_version": FORMAT_VERSION,
      "kind": KIND,
      "dataset_id": ref.dataset_id,
      "reference_id": ref.reference_id,
      "num_examples": len(ref),
      "arrays_file": ARRAYS_FILE,
      "content_hash": ref.content_hash(),
      "temperature": 1.0,
      "definition": "sum over response tokens (EOS included) of log pi_ref(y_t | x, y_<t)",
      "code_version": artifacts.code_version(),
  }
  if extra_metadata:
    manifest["extra"] = artifacts.to_jsonable(dict(extra_metadata), field="extra_metadata")
  if jax.process_index() != 0:
    return manifest
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
  try:
    np.savez(tmp / ARRAYS_FILE, example_ids=ref.example_ids, ref_chosen_logp_N=ref.chosen_logp_N,
             ref_rejected_logp_N=ref.rejected_logp_N)
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                     encoding="utf-8")
    if directory.exists():
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return manifest


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
  """The manifest of a stored folder; raises ReferenceLogProbsError naming the file."""
  path = pathlib.Path(directory) / MANIFEST_FILE
  if not path.is_file():
    raise ReferenceLogProbsError(f"{path}: no reference log-prob manifest")
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ReferenceLogProbsError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
  if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
    raise ReferenceLogProbsError(f"{path}: not a {KIND} manifest")
  if manifest.get("format_version") != FORMAT_VERSION:
    raise ReferenceLogProbsError(f"{path}: format_version {manifest.get('format_version')!r}, "
                                 f"this code reads {FORMAT_VERSION}")
  for field in ("dataset_id", "reference_id", "num_examples", "arrays_file", "content_hash"):
    if field not in manifest:
      raise ReferenceLogProbsError(f"{path}: missing field {field!r}")
  return manifest


def load(directory: str | os.PathLike, *, dataset_id: str,
         reference_id: Optional[str] = None) -> ReferenceLogProbs:
  """Loads and verifies a stored folder against the dataset (and reference) this run uses.

  Raises:
    ReferenceLogProbsError: naming the file and field when the manifest is missing or malformed,
      the ids do not match this run's, an array is missing, or the content hash differs.
  """
  directory = pathlib.Path(directory)
  manifest = read_manifest(directory)
  where = directory / MANIFEST_FILE
  if manifest["dataset_id"] != dataset_id:
    raise ReferenceLogProbsError(f"{where}: computed for dataset {manifest['dataset_id']!r}, but "
                                 f"this run trains on dataset {dataset_id!r}")
  if reference_id is not None and manifest["reference_id"] != reference_id:
    raise ReferenceLogProbsError(f"{where}: computed with reference {manifest['reference_id']!r}, "
                                 f"but this run's reference is {reference_id!r}")
  arrays_path = directory / manifest["arrays_file"]
  if not arrays_path.is_file():
    raise ReferenceLogProbsError(f"{arrays_path}: missing (named by {where})")
  with np.load(arrays_path, allow_pickle=False) as f:
    missing = [k for k in ("example_ids", "ref_chosen_logp_N", "ref_rejected_logp_N")
               if k not in f.files]
    if missing:
      raise ReferenceLogProbsError(f"{arrays_path}: missing arrays {missing}")
    ref = ReferenceLogProbs(f["example_ids"], f["ref_chosen_logp_N"], f["ref_rejected_logp_N"],
                            dataset_id=manifest["dataset_id"],
                            reference_id=manifest["reference_id"], source=str(directory))
  if len(ref) != manifest["num_examples"]:
    raise ReferenceLogProbsError(f"{arrays_path}: {len(ref)} examples, manifest says "
                                 f"{manifest['num_examples']}")
  digest = ref.content_hash()
  if digest != manifest["content_hash"]:
    raise ReferenceLogProbsError(f"{arrays_path}: content hash {digest} does not match the "
                                 f"manifest's {manifest['content_hash']} (file modified?)")
  return ref


def load_or_compute(root: str | os.PathLike, *, dataset_id: str, reference_id: str,
                    compute: Callable[[], ReferenceLogProbs],
                    extra_metadata: Optional[Mapping[str, Any]] = None
                    ) -> tuple[ReferenceLogProbs, pathlib.Path, bool]:
  """Loads the cached folder for (dataset, reference) under `root`, computing it when absent.

  Returns:
    (log-probs, folder, computed): `computed` is True when they were computed by this call.
  """
  directory = cache_directory(root, dataset_id, reference_id)
  if (directory / MANIFEST_FILE).exists():
    return load(directory, dataset_id=dataset_id, reference_id=reference_id), directory, False
  ref = compute()
  if ref.dataset_id != dataset_id or ref.reference_id != reference_id:
    raise ValueError(f"compute() returned log-probs for ({ref.dataset_id!r}, "
                     f"{ref.reference_id!r}), expected ({dataset_id!r}, {reference_id!r})")
  save(directory, ref, extra_metadata)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"reference_logprobs_{directory.name}")
  return ref, directory, True
