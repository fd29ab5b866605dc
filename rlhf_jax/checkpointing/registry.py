"""Artifacts passed between pipeline stages by id, never by guessed paths.

A stage that produces something reusable (a policy, a reward model, a dataset) exports it and
writes a small JSON record `<registry>/<artifact_id>.json` naming its kind, files, model config,
tokenizer and provenance. The next stage is given the id and resolves it here.

Paths may be local or bucket URIs (`gs://...`, see `paths.as_path`). Every process calls
`export_params` (Orbax writes each host's shards); only process 0 writes the JSON record.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from rlhf_jax.checkpointing import artifacts, paths


def export_params(path: str | os.PathLike, params: Any) -> str:
  """Saves a parameter pytree (sharded arrays welcome) and returns its content-hash digest."""
  path = paths.as_path(path)
  digest = artifacts.content_hash(params)
  exists = path.exists()
  if jax.process_count() > 1:
    # Every host must look before any host starts writing (in a bucket Orbax writes in place).
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"export_params_check:{path}")
  if exists:
    raise FileExistsError(f"export target {path} already exists")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params)
  return digest


def load_params(path: str | os.PathLike, abstract_params: Optional[Any] = None) -> Any:
  """Restores exported params; with `abstract_params` (ShapeDtypeStructs with shardings) directly
  into those shardings, e.g. onto another mesh."""
  path = paths.as_path(path)
  if not path.exists():
    raise FileNotFoundError(f"no exported parameters at {path}")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract_params) if abstract_params is not None else ckptr.restore(path)


def register(registry_dir: str | os.PathLike, record: dict[str, Any]) -> epath.Path:
  """Writes `record` (must hold "artifact_id" and "kind") atomically from process 0; returns its path."""
  for key in ("artifact_id", "kind"):
    if key not in record:
      raise ValueError(f"artifact record needs {key!r}: {sorted(record)}")
  registry_dir = paths.as_path(registry_dir)
  path = registry_dir / f"{record['artifact_id']}.json"
  if jax.process_index() == 0:
    registry_dir.mkdir(parents=True, exist_ok=True)
    paths.atomic_write_text(path, json.dumps(artifacts.to_jsonable(record), indent=2, sort_keys=True))
  if jax.process_count() > 1:  # no host resolves the id before it is written
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(f"register:{record['artifact_id']}")
  return path


def resolve(registry_dir: str | os.PathLike, artifact_id: str) -> dict[str, Any]:
  """The record of `artifact_id` (a path to a record file is accepted too)."""
  registry_dir = paths.as_path(registry_dir)
  candidate = paths.as_path(artifact_id) if artifact_id.endswith(".json") else None
  path = candidate if candidate is not None and candidate.exists() else (
      registry_dir / f"{artifact_id}.json")
  if not path.exists():
    known = sorted(p.stem for p in registry_dir.glob("*.json")) if registry_dir.is_dir() else []
    raise FileNotFoundError(f"artifact {artifact_id!r} is not registered in {registry_dir}; known: {known}")
  return json.loads(path.read_text())
