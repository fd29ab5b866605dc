"""Pod-sized variants of any experiment config: TPU topology, mesh, batch sizes, bfloat16 compute.

A config family (configs/<family>.py) gets its pod variants in one line of its `get_config`:

  if variant in pods.POD_VARIANTS:
    return pods.apply_pod(config, variant)

`apply_pod` rewrites, in place and only where the config has these fields:

  mesh.data / mesh.fsdp / mesh.tensor   the topology's mesh (explicit sizes, so a run on a machine
                                        with another device count fails validation at once);
  batch.global_batch_size,              the topology's batch sizes (or the family's own fields via
  batch.micro_batch_size                `batch=`, e.g. PPO rollout sizes);
  every `compute_dtype`                 "bfloat16" (model sections and the optimizer);
  every model section                   the `POD_MODEL_PRESET` decoder shape (sections made by
                                        `model_section`: they have `preset` and `d_model`); the
                                        vocabulary size is kept (-1 = the tokenizer's);

and adds a `pod` section (accelerator type, runtime version, device and process counts) that
scripts/tpu/ and `validate_pod` read. Stages that start from another stage's artifact (DPO, PPO
from SFT) therefore get the same decoder shape on the same pod.

Topology facts (Cloud TPU documentation):
  v4-32:   16 chips (2 TensorCores each, one JAX device per chip in megacore mode) on 4 hosts of
           4 chips; JAX sees 16 devices in 4 processes.
  v5e-256 (accelerator type v5litepod-256): 256 single-TensorCore chips, 256 JAX devices. Hosts
           have 4 chips in multi-host training slices (64 processes); the same mesh and batches
           also divide evenly over 8-chip hosts (32 processes).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Union

import ml_collections

from rlhf_jax.models.config import PRESETS

POD_MODEL_PRESET = "small"  # decoder shape of every pod variant (rlhf_jax.models.PRESETS)


@dataclasses.dataclass(frozen=True)
class PodTopology:
  """A TPU slice and the mesh / batch layout our pod variants use on it."""

  name: str  # human name, e.g. "v4-32"
  accelerator_type: str  # `gcloud compute tpus tpu-vm create --accelerator-type`
  runtime_version: str  # `--version` (TPU VM software image) that JAX recommends for it
  num_devices: int  # devices JAX sees in total (`jax.device_count()`)
  num_processes: int  # hosts, one JAX process each (`jax.process_count()`)
  data: int  # mesh axis sizes; data * fsdp * tensor == num_devices
  fsdp: int
  tensor: int
  global_batch_size: int  # examples per optimiser step, all hosts
  micro_batch_size: int  # examples per forward/backward pass (gradient accumulation below it)

  @property
  def mesh_shape(self) -> dict[str, int]:
    return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

  @property
  def data_parallel_size(self) -> int:
    return self.data * self.fsdp

  def check(self) -> "PodTopology":
    """Raises ValueError when the mesh does not cover the devices or a batch does not divide."""
    if math.prod(self.mesh_shape.values()) != self.num_devices:
      raise ValueError(f"pod {self.name}: mesh {self.mesh_shape} has {math.prod(self.mesh_shape.values())} "
                       f"devices, the slice has {self.num_devices}")
    if self.num_devices % self.num_processes:
      raise ValueError(f"pod {self.name}: {self.num_devices} devices do not split over "
                       f"{self.num_processes} hosts")
    for name in ("global_batch_size", "micro_batch_size"):
      if getattr(self, name) % self.data_parallel_size:
        raise ValueError(f"pod {self.name}: {name} ({getattr(self, name)}) is not divisible by the "
                         f"data-parallel size {self.data_parallel_size}")
    return self


TOPOLOGIES: dict[str, PodTopology] = {
    "pod_v4_32": PodTopology(
        name="v4-32", accelerator_type="v4-32", runtime_version="tpu-ubuntu2204-base",
        num_devices=16, num_processes=4, data=2, fsdp=4, tensor=2,
        global_batch_size=128, micro_batch_size=64),
    "pod_v5e_256": PodTopology(
        name="v5e-256", accelerator_type="v5litepod-256", runtime_version="v2-alpha-tpuv5-lite",
        num_devices=256, num_processes=64, data=16, fsdp=8, tensor=2,
        global_batch_size=512, micro_batch_size=256),
}
POD_VARIANTS = tuple(TOPOLOGIES)

BatchValue = Union[int, Callable[[PodTopology], int]]


def _section_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, ml_collections.ConfigDict]]:
  """(dotted path, section) for the config and every nested ConfigDict."""
  out = [(prefix, config)]
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out.extend(_section_paths(value, f"{prefix}{key}."))
  return out


def _set_dotted(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  *parents, leaf = dotted.split(".")
  section = config
  for i, name in enumerate(parents):
    if name not in section or not isinstance(section[name], ml_collections.ConfigDict):
      raise ValueError(f"pod batch field {dotted!r}: the config has no section "
                       f"{'.'.join(parents[:i + 1])!r}")
    section = section[name]
  if leaf not in section:
    raise ValueError(f"pod batch field {dotted!r}: the config has no field {leaf!r} there")
  section[leaf] = value


def apply_pod(config: ml_collections.ConfigDict, variant: str, *,
              batch: Optional[Mapping[str, BatchValue]] = None,
              model_preset: Optional[str] = POD_MODEL_PRESET) -> ml_collections.ConfigDict:
  """Turns a family config into its pod variant `variant` (module docstring); returns it.

  Args:
    config: the family's default config (modified in place).
    variant: a key of `TOPOLOGIES` ("pod_v4_32", "pod_v5e_256").
    batch: dotted field -> value (or `f(topology)`) for families whose batch is not
      `batch.global_batch_size` / `batch.micro_batch_size`; None uses those two.
    model_preset: decoder shape of every model section; None keeps the family's.

  Raises:
    ValueError: naming the variant or the missing field.
  """
  if variant not in TOPOLOGIES:
    raise ValueError(f"unknown pod variant {variant!r}; choose one of {sorted(TOPOLOGIES)}")
  topo = TOPOLOGIES[variant].check()
  if "mesh" not in config:
    raise ValueError("apply_pod needs a `mesh` section (rlhf_jax.config.mesh_section())")
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = topo.data, topo.fsdp, topo.tensor

  if batch is None:
    if "batch" not in config or "global_batch_size" not in config.batch:
      raise ValueError("apply_pod: the config has no batch.global_batch_size; pass batch={dotted field: "
                       "size} with the family's own batch fields")
    batch = {"batch.global_batch_size": topo.global_batch_size}
    if "micro_batch_size" in config.batch:
      batch["batch.micro_batch_size"] = topo.micro_batch_size
  for dotted, value in batch.items():
    _set_dotted(config, dotted, value(topo) if callable(value) else value)

  for _, section in _section_paths(config):
    is_model = "preset" in section and "d_model" in section
    if is_model and model_preset is not None:
      shape = PRESETS[model_preset].to_dict()
      for key, value in shape.items():
        if key in section and key not in ("vocab_size", "param_dtype", "compute_dtype"):
          section[key] = value
      section.preset = model_preset
    if "compute_dtype" in section:
      section.compute_dtype = "bfloat16"

  config.pod = ml_collections.ConfigDict({
      "name": topo.name,  # the slice this variant is laid out for
      "accelerator_type": topo.accelerator_type,  # gcloud --accelerator-type
      "runtime_version": topo.runtime_version,  # gcloud --version (TPU VM image)
      "num_devices": topo.num_devices,  # JAX devices in the slice
      "num_processes": topo.num_processes,  # hosts (one JAX process each)
  })
  return config


def validate_pod(config: ml_collections.ConfigDict, validate_fn: Callable[..., Any],
                 num_processes: Optional[int] = None) -> Any:
  """Runs a family's `validate_and_derive` for the pod the config is laid out for, without devices.

  Args:
    config: a pod variant (has a `pod` section).
    validate_fn: `validate_and_derive(config, num_devices=..., num_processes=...)` of the family.
    num_processes: override the host count (e.g. 32 for v5e-256 on 8-chip hosts).
  """
  if "pod" not in config:
    raise ValueError("config has no `pod` section: build it with rlhf_jax.config.pods.apply_pod")
  return validate_fn(config, num_devices=config.pod.num_devices,
                     num_processes=config.pod.num_processes if num_processes is None else num_processes)


def main(argv: Optional[list[str]] = None) -> int:
  """`python -m rlhf_jax.config.pods configs/sft.py:pod_v4_32 [--num_processes N]`: validates a pod
  config's mesh, batch and parameter-sharding arithmetic on this machine (CPU only, nothing runs)."""
  import argparse  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from rlhf_jax.config import families  # pylint: disable=g-import-not-at-top

  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument("config", help="path/to/config.py:pod_variant")
  parser.add_argument("--num_processes", type=int, default=None, help="override the host count")
  args = parser.parse_args(argv)
  jax.config.update("jax_platforms", "cpu")  # never claim the accelerators of the machine we run on
  family, config = families.load_config_arg(args.config)
  derived = validate_pod(config, family.validator(), num_processes=args.num_processes)
  print(f"{args.config}: OK on {config.pod.name} ({config.pod.num_devices} devices, "
        f"{args.num_processes or config.pod.num_processes} processes)")
  print(derived)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
