"""Dataset manifests: what a prepared dataset version contains, and a content-derived id.

A manifest is a JSON file next to the produced data files:

  {"manifest_version": 1, "name": ..., "schema_version": ..., "dataset_id": "name@<12 hex>",
   "created_at": ..., "sources": [{"name", "path", "sha256", "bytes"}],
   "splits": {split: {"count": n, "files": [{"path", "sha256", "bytes"}]}},
   "filters": {"records_read", "kept", "dropped": {reason: n}, "truncated": {field: n}},
   "tokenizer_id": ..., "params": {...}}

The dataset id hashes the canonical JSON of everything except `dataset_id`, `created_at` and the
local `path` of each source (where a source happens to live does not change the data; its name,
size and sha256 do). Output paths are relative to the manifest's folder. Preparing the same data
twice gives the same id; `verify_manifest` re-hashes every file and refuses edits.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

from rlhf_jax.data import records
from rlhf_jax.data.schemas import SCHEMA_VERSION
from rlhf_jax.data.validation import IngestionReport

MANIFEST_VERSION = 1
_NOT_HASHED = ("dataset_id", "created_at")
_CHUNK = 1 << 20


class ManifestError(ValueError):
  """A manifest or one of the files it lists is missing, malformed or does not match."""


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
  """{"sha256": hex, "bytes": size} of a file, read in 1 MiB chunks."""
  h = hashlib.sha256()
  size = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
      size += len(chunk)
  return {"sha256": h.hexdigest(), "bytes": size}


def _canonical(obj: Any) -> bytes:
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                    allow_nan=False).encode("utf-8")


def dataset_id(manifest: Mapping[str, Any]) -> str:
  """"<name>@<first 12 hex of sha256 of the hashed content>"."""
  content = {k: v for k, v in manifest.items() if k not in _NOT_HASHED}
  content["sources"] = [{k: v for k, v in s.items() if k != "path"}
                        for s in manifest.get("sources", [])]
  return f"{manifest['name']}@{hashlib.sha256(_canonical(content)).hexdigest()[:12]}"


def _filters(report: IngestionReport | Mapping[str, Any] | None) -> dict[str, Any]:
  if report is None:
    return {}
  d = report.to_dict() if isinstance(report, IngestionReport) else dict(report)
  return {k: d[k] for k in ("records_read", "kept", "dropped", "truncated") if k in d}


def build_manifest(name: str, *, root: str | os.PathLike,
                   outputs: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]],
                   counts: Mapping[str, int], sources: Sequence[str | os.PathLike] = (),
                   report: IngestionReport | Mapping[str, Any] | None = None,
                   tokenizer_id: str | None = None, params: Mapping[str, Any] | None = None,
                   schema_version: str = SCHEMA_VERSION) -> dict[str, Any]:
  """Builds (does not write) the manifest of a prepared dataset.

  Args:
    name: dataset name (the part of the id before "@").
    root: the folder the manifest will be written to; outputs must lie under it.
    outputs: split -> produced file(s).
    counts: split -> number of examples (same keys as `outputs`).
    sources: input files (hashed now).
    report: ingestion report (or its dict); its counts become `filters`.
    tokenizer_id: `Tokenizer.id` when the data were tokenised or length-filtered with one.
    params: creation parameters (seed, eval_fraction, policy, ...), JSON-serialisable.
    schema_version: version of the record schema.
  """
  if not name or "@" in name:
    raise ManifestError(f"dataset name must be non-empty without '@', got {name!r}")
  if set(outputs) != set(counts):
    raise ManifestError(f"outputs splits {sorted(outputs)} != counts splits {sorted(counts)}")
  root = pathlib.Path(root).resolve()
  splits = {}
  for split in sorted(outputs):
    files = outputs[split]
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    entries = []
    for f in files:
      p = pathlib.Path(f).resolve()
      try:
        rel = p.relative_to(root)
      except ValueError:
        raise ManifestError(f"output file {p} is not under the manifest folder {root}") from None
      entries.append({"path": rel.as_posix(), **file_digest(p)})
    n = counts[split]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
      raise ManifestError(f"counts[{split!r}] must be a non-negative int, got {n!r}")
    splits[split] = {"count": n, "files": entries}
  manifest = {
      "manifest_version": MANIFEST_VERSION, "name": name, "schema_version": schema_version,
      "sources": [{"name": f"{pathlib.Path(s).parent.name}/{pathlib.Path(s).name}",
                   "path": str(s), **file_digest(s)} for s in sources],
      "splits": splits, "filters": _filters(report), "tokenizer_id": tokenizer_id,
      "params": dict(params or {}),
      "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  try:
    _canonical(manifest)
  except (TypeError, ValueError) as e:
    raise ManifestError(f"manifest of {name!r} is not JSON-serialisable (check params): {e}"
                        ) from None
  manifest["dataset_id"] = dataset_id(manifest)
  return manifest


def write_manifest(path: str | os.PathLike, manifest: Mapping[str, Any]) -> str:
  """Writes the manifest atomically (pretty JSON) and returns its dataset id."""
  if manifest.get("dataset_id") != dataset_id(manifest):
    raise ManifestError("manifest['dataset_id'] does not match its content; rebuild it")
  records.write_text_atomic(path, json.dumps(manifest, indent=2, sort_keys=True,
                                             ensure_ascii=False) + "\n")
  return manifest["dataset_id"]


def load_manifest(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a manifest, checking it is a JSON object with the required keys."""
  try:
    text = pathlib.Path(path).read_text(encoding="utf-8")
  except OSError as e:
    raise ManifestError(f"{path}: cannot read manifest ({e.strerror or e})") from None
  except UnicodeDecodeError:
    raise ManifestError(f"{path}: manifest is not UTF-8 text") from None
  try:
    manifest = json.loads(text)
  except json.JSONDecodeError as e:
    raise ManifestError(f"{path}:{e.lineno}: malformed manifest JSON: {e.msg}") from None
  if not isinstance(manifest, dict):
    raise ManifestError(f"{path}: manifest must be a JSON object")
  for key in ("name", "dataset_id", "splits", "sources", "schema_version"):
    if key not in manifest:
      raise ManifestError(f"{path}: manifest lacks {key!r}")
  return manifest


def verify_manifest(path: str | os.PathLike, check_sources: bool = False) -> dict[str, Any]:
  """Re-hashes every output file (and, optionally, every source) and returns the manifest.

  Raises:
    ManifestError: naming the manifest or the file that is missing, has the wrong size
      (e.g. truncated) or the wrong sha256 (tampered), or when the manifest itself was edited.
  """
  path = pathlib.Path(path)
  manifest = load_manifest(path)
  expected = dataset_id(manifest)
  if manifest["dataset_id"] != expected:
    raise ManifestError(f"{path}: content does not match dataset_id {manifest['dataset_id']!r} "
                        f"(recomputed {expected!r}); the manifest was edited")
  entries = [(path.parent / f["path"], f) for s in manifest["splits"].values() for f in s["files"]]
  if check_sources:
    entries += [(pathlib.Path(s["path"]), s) for s in manifest["sources"]]
  for file, entry in entries:
    if not file.is_file():
      raise ManifestError(f"{file}: listed in {path} but missing")
    actual = file_digest(file)
    if actual["bytes"] != entry["bytes"]:
      raise ManifestError(f"{file}: size {actual['bytes']} bytes, manifest {path} says "
                          f"{entry['bytes']} (truncated or modified)")
    if actual["sha256"] != entry["sha256"]:
      raise ManifestError(f"{file}: sha256 {actual['sha256'][:12]}... does not match manifest "
                          f"{path} ({entry['sha256'][:12]}...); the file was modified")
  return manifest
