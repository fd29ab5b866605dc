"""What every training run sets up the same way: paths, mesh and batch sizes, the tokenizer and
model config it starts from (a registered policy or scratch), fixed-size evaluation chunks,
checkpoints and artifacts.

Multi-host contract (one JAX process per host, all running the same program):

  * every process builds the same mesh, loads its own rows (`derived.batch.per_host_batch_size`)
    and calls every jitted step, checkpoint save/restore and parameter export;
  * only process 0 writes JSON side files (tokenizer, artifact records, summaries, metrics);
  * the workdir must be visible to every host (a bucket such as `gs://...` on TPU pods); paths go
    through `checkpointing.paths.as_path` (`etils.epath`) because `pathlib` mangles `gs://`.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, TypeVar

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import PartitionSpec

from rlhf_jax import models, sharding
from rlhf_jax.algorithms import batch_math
from rlhf_jax.algorithms import optimizer as optimizer_lib
from rlhf_jax.checkpointing import manager as manager_lib
from rlhf_jax.checkpointing import paths, registry
from rlhf_jax.config import model_config_from
from rlhf_jax.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)
T = TypeVar("T")
# Fields a policy artifact record needs to start another run from it.
POLICY_RECORD_FIELDS = ("params_path", "model_config", "tokenizer_path")


def workdir_path(workdir: str | os.PathLike) -> epath.Path:
  """The run directory as an `epath.Path` (absolute if local, untouched if `gs://...`)."""
  return paths.as_path(workdir)


def is_main_process() -> bool:
  """True on the process that writes side files (JSON, summaries, metrics)."""
  return jax.process_index() == 0


def sync_hosts(name: str) -> None:
  """Barrier across processes (a no-op in single-process runs)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def check_same_on_all_hosts(value: str, what: str) -> None:
  """Raises RuntimeError when processes disagree on `value` (e.g. a tokenizer or dataset id)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  digest = np.frombuffer(hashlib.sha256(value.encode()).digest()[:8], np.uint32)
  everyone = np.asarray(multihost_utils.process_allgather(digest))  # [processes, 2]
  if not (everyone == everyone[:1]).all():
    raise RuntimeError(f"{what} differs between processes (this is process {jax.process_index()} with "
                       f"{value!r}); every host must build identical {what}")


def to_host(tree: Any) -> Any:
  """NumPy copies of a tree of (possibly multi-host, non-addressable) arrays, on every process."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(fetch, tree)


def host_rows(rows: list[Any]) -> list[Any]:
  """This process's contiguous share of a global batch's rows (all of them in one process)."""
  count, index = jax.process_count(), jax.process_index()
  if len(rows) % count:
    raise ValueError(f"a batch of {len(rows)} rows cannot be split evenly over {count} processes")
  per_host = len(rows) // count
  return rows[index * per_host:(index + 1) * per_host]


def padded_chunks(records: Sequence[T], size: int) -> list[tuple[list[T], int]]:
  """Consecutive chunks of `size` records, the last one topped up with repeats of its last
  record, each with its number of real records: fixed-size evaluation batches (one compiled
  shape) whose filler rows the caller drops or weights 0.

  Example:
    padded_chunks("abcde", 2) == [(["a", "b"], 2), (["c", "d"], 2), (["e", "e"], 1)]
  """
  if size <= 0:
    raise ValueError(f"chunk size must be positive, got {size}")
  out = []
  for start in range(0, len(records), size):
    chunk = list(records[start:start + size])
    out.append((chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)))
  return out


def mesh_shape_from_config(cfg: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """{"data", "fsdp", "tensor"} sizes of the `mesh` section on `num_devices` devices.

  Raises:
    ValueError: naming the mesh.* fields when they do not cover the devices.
  """
  axes = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor}
  try:
    shape = sharding.resolve_mesh_shape(axes, num_devices)
  except ValueError as e:
    raise ValueError(f"mesh.data={cfg.data}, mesh.fsdp={cfg.fsdp}, mesh.tensor={cfg.tensor} on "
                     f"{num_devices} devices: {e}") from None
  return dict(zip(sharding.MESH_AXES, shape))


def batch_sizes_from_config(cfg: ml_collections.ConfigDict, mesh_shape: Mapping[str, int],
                            num_processes: int, section: str = "batch") -> batch_math.BatchSizes:
  """Derived batch sizes of a `batch` section (global_batch_size, micro_batch_size 0 = global).

  Raises:
    ValueError: naming the `<section>.*` fields, the data-parallel size and the process count.
  """
  data_parallel = mesh_shape["data"] * mesh_shape["fsdp"]
  try:
    return batch_math.derive_batch(cfg.global_batch_size, cfg.micro_batch_size or None,
                                   data_parallel_size=data_parallel, num_processes=num_processes)
  except ValueError as e:
    raise ValueError(f"{section}.global_batch_size={cfg.global_batch_size}, {section}.micro_batch_size="
                     f"{cfg.micro_batch_size} (0 = global) on {data_parallel} data-parallel devices "
                     f"(mesh data x fsdp) and {num_processes} processes: {e}") from None


class RunSizes(NamedTuple):
  """Mesh and batch sizes every trainer derives the same way (`derive_run_sizes`)."""
  mesh_shape: dict[str, int]
  batch: batch_math.BatchSizes


def derive_run_sizes(config: ml_collections.ConfigDict, num_devices: Optional[int] = None,
                     num_processes: Optional[int] = None) -> RunSizes:
  """The checks that open every trainer's `validate_and_derive`: the `mesh` section over the
  devices, the `batch` section over the mesh and processes, the `optimizer` section, and
  optimizer.compute_dtype == model.compute_dtype.

  Args:
    config: a trainer config with `mesh`, `batch`, `optimizer` and `model` sections.
    num_devices: global device count; default `jax.device_count()` (pass a pod's count to check
      a pod config on a laptop).
    num_processes: JAX processes (hosts); default `jax.process_count()`.

  Raises:
    ValueError: naming the offending field.
  """
  num_devices = jax.device_count() if num_devices is None else num_devices
  num_processes = jax.process_count() if num_processes is None else num_processes
  mesh_shape = mesh_shape_from_config(config.mesh, num_devices)
  batch = batch_sizes_from_config(config.batch, mesh_shape, num_processes)
  optimizer_lib.validate_optimizer_config(config.optimizer)
  if config.optimizer.compute_dtype != config.model.compute_dtype:
    raise ValueError(f"optimizer.compute_dtype ({config.optimizer.compute_dtype!r}) must equal "
                     f"model.compute_dtype ({config.model.compute_dtype!r})")
  return RunSizes(mesh_shape=mesh_shape, batch=batch)


def mesh_from_config(cfg: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  return sharding.make_mesh({"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor})


def rules_from_config(cfg: ml_collections.ConfigDict) -> sharding.LogicalRules:
  return sharding.rules_from_config(cfg.get("rules"))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """A SentencePiece model from a local file or a bucket object."""
  path = paths.as_path(path)
  return Tokenizer.from_bytes(path.read_bytes()) if paths.is_remote(path) else Tokenizer.load(path)


def check_param_sharding(model_cfg: models.ModelConfig, mesh_shape: Mapping[str, int],
                         rules: sharding.LogicalRules) -> None:
  """Raises ValueError naming the parameter when a mesh axis does not divide the dimension it shards.

  Works from shapes alone (`jax.eval_shape`) and a mesh-shape dict, so a pod layout can be checked
  on a laptop; `sharding.logical_shardings` makes the same check on real devices at run time.
  """
  abstract = jax.eval_shape(functools.partial(models.init_params, models.CausalLM(model_cfg)),
                            jax.random.key(0))
  is_spec = lambda x: isinstance(x, PartitionSpec)  # pylint: disable=unnecessary-lambda-assignment
  mesh_specs = jax.tree.map(lambda s: nn.logical_to_mesh_axes(s, rules), nn.get_partition_spec(abstract),
                            is_leaf=is_spec)
  shapes = jax.tree.leaves(nn.unbox(abstract))
  specs = jax.tree_util.tree_leaves_with_path(mesh_specs, is_leaf=is_spec)
  for (path, spec), leaf in zip(specs, shapes):
    for dim, axes in enumerate(spec):
      if axes is None:
        continue
      axes = axes if isinstance(axes, tuple) else (axes,)
      size = math.prod(mesh_shape[a] for a in axes)
      if leaf.shape[dim] % size:
        raise ValueError(f"parameter {jax.tree_util.keystr(path)} of shape {leaf.shape}: dimension {dim} "
                         f"({leaf.shape[dim]}) is not divisible by mesh axes {axes} of size {size}; "
                         f"change mesh.* or the model / tokenizer sizes")


def tokenizer_file(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
  """Where the run's tokenizer lives: `cfg.path`, or `<workdir>/tokenizer.model` when the run
  trains its own (`tokenizer_from_config`)."""
  return cfg.path or str(workdir_path(workdir) / "tokenizer.model")


def tokenizer_from_config(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike,
                          texts_fn: Callable[[], Iterable[str]]) -> Tokenizer:
  """Loads `cfg.path`, or trains one on `texts_fn()` and keeps it as `<workdir>/tokenizer.model`
  (a resumed run reloads that file, so its ids never change mid-run).

  Every process builds the tokenizer itself (training is deterministic); process 0 writes the file,
  and all processes check that they hold the same model.
  """
  if cfg.path:
    tok = load_tokenizer(cfg.path)
  else:
    path = paths.as_path(tokenizer_file(cfg, workdir))
    if path.exists():
      tok = load_tokenizer(path)
    else:
      tok = Tokenizer.train(texts_fn(), vocab_size=cfg.vocab_size, model_type=cfg.model_type)
      if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.atomic_write_bytes(path, tok.to_bytes())
      logger.info("trained tokenizer %s (%d pieces) -> %s", tok.id, tok.vocab_size, path)
  check_same_on_all_hosts(tok.id, "the tokenizer")
  return tok


def resolve_policy_record(artifact_id: str, registry_path: str | os.PathLike, *,
                          field: str = "init.policy_artifact") -> Optional[dict[str, Any]]:
  """The registry record of the policy artifact a run starts from; None when `artifact_id` is "".

  Args:
    artifact_id: an artifact id ("sft_policy@1a2b3c4d5e6f") or the path of its record JSON.
    registry_path: the artifact registry (`registry_dir`).
    field: the config field the id came from (for error messages).

  Raises:
    FileNotFoundError: the id is not registered.
    ValueError: naming `field` when the record lacks one of `POLICY_RECORD_FIELDS`.
  """
  if not artifact_id:
    return None
  record = registry.resolve(registry_path, artifact_id)
  for key in POLICY_RECORD_FIELDS:
    if key not in record:
      raise ValueError(f"{field} {artifact_id!r}: its record lacks {key!r}; is it a policy "
                       "artifact written by train_sft?")
  return record


class InitialModel(NamedTuple):
  """Tokenizer and model config a run starts from (`tokenizer_and_model_config`)."""
  tokenizer: Tokenizer
  tokenizer_path: str  # recorded with the run's exported artifact
  model_config: models.ModelConfig


def tokenizer_and_model_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                               record: Optional[Mapping[str, Any]],
                               texts_fn: Callable[[], Iterable[str]]) -> InitialModel:
  """The tokenizer and model config of a run that starts from a policy artifact or from scratch.

  With `record` (`resolve_policy_record`): the artifact's tokenizer and model config, keeping
  only model.compute_dtype and model.remat from the config. Without: `tokenizer_from_config`
  (trained on `texts_fn()` unless tokenizer.path is set) and the `model` section, its
  vocab_size -1 filled from the tokenizer.
  """
  if record is not None:
    model_cfg = models.ModelConfig.from_dict(record["model_config"]).replace(
        compute_dtype=config.model.compute_dtype, remat=config.model.remat).validate()
    return InitialModel(load_tokenizer(record["tokenizer_path"]), record["tokenizer_path"],
                        model_cfg)
  tokenizer = tokenizer_from_config(config.tokenizer, workdir, texts_fn)
  return InitialModel(tokenizer, tokenizer_file(config.tokenizer, workdir),
                      model_config_from(config.model, vocab_size=tokenizer.vocab_size))


def checkpoint_manager_from_config(cfg: ml_collections.ConfigDict, workdir: str | os.PathLike,
                                   name: str) -> manager_lib.CheckpointManager:
  return manager_lib.CheckpointManager(
      workdir_path(workdir) / "checkpoints", max_to_keep=cfg.max_to_keep,
      keep_best_metric=cfg.keep_best_metric or None, best_mode=cfg.best_mode, async_save=cfg.async_save,
      name=name)


def registry_dir(workdir: str | os.PathLike, configured: Optional[str] = None) -> epath.Path:
  """The artifact registry: `configured` if set, else `<workdir>/../artifacts` shared by sibling stages."""
  return paths.as_path(configured) if configured else workdir_path(workdir).parent / "artifacts"


def write_json_side_file(path: str | os.PathLike, text: str) -> None:
  """Writes a small text file (summary, report) from process 0 only, atomically."""
  if is_main_process():
    paths.atomic_write_text(path, text)


def export_and_register(*, workdir: str | os.PathLike, registry_path: str | os.PathLike, kind: str,
                        name: str, params, record: dict) -> dict:
  """Exports final params to `<workdir>/export/<name>` and registers them under their content hash.

  Every process must call this (Orbax writes each host's shards). Returns the registered record
  (with "artifact_id" = "<name>@<first 12 hex of the sha256>").
  """
  export_dir = workdir_path(workdir) / "export" / name
  if is_main_process() and export_dir.exists():
    export_dir.rmtree()  # a re-run of a finished stage re-exports its (identical) params
  sync_hosts(f"export_cleared:{name}")
  digest = registry.export_params(export_dir, params)
  full = {"artifact_id": f"{name}@{digest[:12]}", "kind": kind, "params_path": str(export_dir),
          "content_hash": f"sha256:{digest}", **record}
  registry.register(registry_path, full)
  return full
