"""What every training run sets up the same way: mesh, tokenizer, checkpoint manager, artifacts."""
from __future__ import annotations

import logging
import pathlib
import shutil
from typing import Callable, Iterable, Optional

import jax
import ml_collections

from rlhf_jax import sharding
from rlhf_jax.checkpointing import manager as manager_lib
from rlhf_jax.checkpointing import registry
from rlhf_jax.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def mesh_from_config(cfg: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  return sharding.make_mesh({"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor})


def rules_from_config(cfg: ml_collections.ConfigDict) -> sharding.LogicalRules:
  return sharding.rules_from_config(cfg.get("rules"))


def tokenizer_from_config(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                          texts_fn: Callable[[], Iterable[str]]) -> Tokenizer:
  """Loads `cfg.path`, or trains one on `texts_fn()` and keeps it as `<workdir>/tokenizer.model`
  (a resumed run reloads that file, so its ids never change mid-run)."""
  if cfg.path:
    return Tokenizer.load(cfg.path)
  path = pathlib.Path(workdir) / "tokenizer.model"
  if path.exists():
    return Tokenizer.load(path)
  tok = Tokenizer.train(texts_fn(), vocab_size=cfg.vocab_size, model_type=cfg.model_type)
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(path)
  logger.info("trained tokenizer %s (%d pieces) -> %s", tok.id, tok.vocab_size, path)
  return tok


def checkpoint_manager_from_config(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                                   name: str) -> manager_lib.CheckpointManager:
  return manager_lib.CheckpointManager(
      pathlib.Path(workdir) / "checkpoints", max_to_keep=cfg.max_to_keep,
      keep_best_metric=cfg.keep_best_metric or None, best_mode=cfg.best_mode, async_save=cfg.async_save,
      name=name)


def registry_dir(workdir: str | pathlib.Path, configured: Optional[str] = None) -> pathlib.Path:
  """The artifact registry: `configured` if set, else `<workdir>/../artifacts` shared by sibling stages."""
  return pathlib.Path(configured) if configured else pathlib.Path(workdir).absolute().parent / "artifacts"


def export_and_register(*, workdir: str | pathlib.Path, registry_path: pathlib.Path, kind: str, name: str,
                        params, record: dict) -> dict:
  """Exports final params to `<workdir>/export/<name>` and registers them under their content hash.

  Returns the registered record (with "artifact_id" = "<name>@<first 12 hex of the sha256>").
  """
  export_dir = pathlib.Path(workdir).absolute() / "export" / name
  if export_dir.exists() and jax.process_index() == 0:
    shutil.rmtree(export_dir)  # a re-run of a finished stage re-exports its (identical) params
  digest = registry.export_params(export_dir, params)
  full = {"artifact_id": f"{name}@{digest[:12]}", "kind": kind, "params_path": str(export_dir),
          "content_hash": f"sha256:{digest}", **record}
  registry.register(registry_path, full)
  return full
