"""Pod variants: every training family in configs/ validates on v4-32 and v5e-256 without running.

Families are discovered from configs/*.py (rlhf_jax.config.families); a training family without
pod variants fails here with a message naming the file. Validation uses the family's own
`validate_and_derive(config, num_devices=..., num_processes=...)`: mesh, batch and parameter-sharding
arithmetic for the slice, on this CPU, with nothing compiled or run.
"""
import pathlib

import pytest

from rlhf_jax.config import families, pods

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
FILES = families.config_files(CONFIGS)
# Host counts each slice is validated for: v5e-256 has 4-chip hosts in multi-host training slices
# (64 processes) and 8-chip hosts in the spec sheet (32 processes); the layout must fit both.
PROCESS_COUNTS = {"pod_v4_32": (4,), "pod_v5e_256": (64, 32)}


def test_topologies_match_the_slices():
  v4, v5e = pods.TOPOLOGIES["pod_v4_32"], pods.TOPOLOGIES["pod_v5e_256"]
  assert (v4.num_devices, v4.num_processes, v4.accelerator_type) == (16, 4, "v4-32")
  assert (v5e.num_devices, v5e.num_processes, v5e.accelerator_type) == (256, 64, "v5litepod-256")
  for topo in pods.TOPOLOGIES.values():
    topo.check()
    assert topo.tensor > 1 and topo.fsdp > 1  # the variants exercise every mesh axis
    assert topo.global_batch_size > topo.micro_batch_size  # and gradient accumulation
  assert set(PROCESS_COUNTS) == set(pods.POD_VARIANTS)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_training_family_has_valid_pod_variants(path):
  family = families.load_family(path)
  if not family.trains:
    return  # TRAINER = None: nothing to lay out on a pod (configs_test still loads it)
  missing = [v for v in pods.POD_VARIANTS if v not in family.variants]
  assert not missing, (f"{path} has no pod variant(s) {missing}: add them to VARIANTS and end get_config with "
                       f"`if variant in pods.POD_VARIANTS: return pods.apply_pod(config, variant)`")
  validate = family.validator()
  for variant in pods.POD_VARIANTS:
    config = family.get_config(variant)
    for field in family.requires:  # upstream artifact ids are filled at run time; any well-formed id validates
      section, _, name = field.rpartition(".")
      (config[section] if section else config)[name] = "upstream@000000000000"
    assert config.pod.num_devices == pods.TOPOLOGIES[variant].num_devices
    if "model" in config:
      assert config.model.compute_dtype == "bfloat16"
    for processes in PROCESS_COUNTS[variant]:
      derived = pods.validate_pod(config, validate, num_processes=processes)
      shape = derived.get("mesh_shape") if isinstance(derived, dict) else getattr(derived, "mesh_shape", None)
      if shape is not None:  # the return type is the family's own; most report the mesh they derived
        assert dict(shape) == pods.TOPOLOGIES[variant].mesh_shape, variant
    # The layout is tied to its slice: the same config on another device count is refused.
    with pytest.raises(ValueError, match="mesh"):
      validate(config, num_devices=config.pod.num_devices // 2, num_processes=1)


def test_apply_pod_rewrites_mesh_batch_dtype_and_model():
  import ml_collections
  from rlhf_jax.config import mesh_section, model_section
  config = ml_collections.ConfigDict()
  config.mesh = mesh_section()
  config.policy = model_section("test", vocab_size=-1)
  config.optimizer = ml_collections.ConfigDict({"compute_dtype": "float32", "lr": 1e-3})
  config.batch = ml_collections.ConfigDict({"global_batch_size": 8, "micro_batch_size": 0})
  pods.apply_pod(config, "pod_v4_32")
  assert (config.mesh.data, config.mesh.fsdp, config.mesh.tensor) == (2, 4, 2)
  assert (config.batch.global_batch_size, config.batch.micro_batch_size) == (128, 64)
  assert config.optimizer.compute_dtype == config.policy.compute_dtype == "bfloat16"
  assert config.policy.preset == pods.POD_MODEL_PRESET and config.policy.vocab_size == -1
  assert config.policy.d_model == pods.PRESETS[pods.POD_MODEL_PRESET].d_model
  assert config.pod.num_processes == 4 and config.pod.runtime_version == "tpu-ubuntu2204-base"


def test_apply_pod_names_missing_batch_fields():
  import ml_collections
  from rlhf_jax.config import mesh_section
  config = ml_collections.ConfigDict({"mesh": mesh_section(), "rollout": {"num_prompts": 4}})
  with pytest.raises(ValueError, match="batch.global_batch_size"):
    pods.apply_pod(config, "pod_v4_32")
  with pytest.raises(ValueError, match="rollout.num_samples"):
    pods.apply_pod(config, "pod_v4_32", batch={"rollout.num_samples": 2})
  pods.apply_pod(config, "pod_v5e_256", batch={"rollout.num_prompts": lambda t: 2 * t.data_parallel_size})
  assert config.rollout.num_prompts == 256
  with pytest.raises(ValueError, match="unknown pod variant"):
    pods.apply_pod(config, "pod_v9")


def test_cli_validates_a_pod_config(capsys):
  assert pods.main([str(CONFIGS / "sft.py") + ":pod_v5e_256", "--num_processes", "32"]) == 0
  out = capsys.readouterr().out
  assert "OK on v5e-256 (256 devices, 32 processes)" in out and "per_host_batch_size=16" in out
