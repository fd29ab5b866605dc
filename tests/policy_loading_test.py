"""load_policy: exported SFT params come back exactly, sharded == single device, clear errors."""
import json
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from rlhf_jax import sampling, sharding
from rlhf_jax.algorithms import policy_loading
from rlhf_jax.checkpointing import registry
from tiny_policy import train_tiny_policy


@pytest.fixture(scope="module")
def policy_artifact(tmp_path_factory):
  return train_tiny_policy(tmp_path_factory, "a")


def test_loads_exactly_what_was_exported(policy_artifact):
  registry_dir, artifact_id = policy_artifact
  policy = policy_loading.load_policy(registry_dir, artifact_id)
  model, params, tokenizer, record = policy  # unpacks as a 4-tuple
  assert record["artifact_id"] == artifact_id == policy.artifact_id and record["kind"] == "policy"
  assert model.config.to_dict() == record["model_config"]
  assert tokenizer.id == record["tokenizer_id"]
  raw = registry.load_params(record["params_path"])  # Orbax's own restore, no target
  jax.tree.map(np.testing.assert_array_equal, params, raw)
  assert all(x.sharding.device_set == {jax.devices()[0]} for x in jax.tree.leaves(params))


def test_sharded_load_samples_like_single_device(policy_artifact):
  registry_dir, artifact_id = policy_artifact
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  single = policy_loading.load_policy(registry_dir, artifact_id)
  sharded = policy_loading.load_policy(registry_dir, artifact_id, mesh=mesh)
  leaves = jax.tree.leaves(sharded.params)
  assert all(isinstance(x.sharding, NamedSharding) and x.sharding.mesh.shape == mesh.shape for x in leaves)
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in leaves)
  jax.tree.map(np.testing.assert_array_equal, single.params, sharded.params)
  prompts = [[single.tokenizer.bos_id, 10, 11, 12], [single.tokenizer.bos_id, 20], [single.tokenizer.bos_id, 7, 8],
             [single.tokenizer.bos_id, 30, 31]]
  cfg = sampling.SamplingConfig(max_new_tokens=6, temperature=0.0)
  a = policy_loading.make_sampler(single).generate(single.params, prompts, jax.random.key(0), cfg)
  b = policy_loading.make_sampler(sharded).generate(sharded.params, prompts, jax.random.key(0), cfg)
  np.testing.assert_array_equal(a.tokens_BxS, b.tokens_BxS)
  np.testing.assert_allclose(a.logprobs_BxS, b.logprobs_BxS, atol=1e-4)


def test_compute_dtype_override(policy_artifact):
  policy = policy_loading.load_policy(*policy_artifact, compute_dtype="bfloat16")
  assert policy.model.config.compute_dtype == "bfloat16"
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(policy.params))  # storage dtype unchanged


def _copy_record(registry_dir, artifact_id, new_id, **changes):
  record = json.loads((registry_dir / f"{artifact_id}.json").read_text())
  record.update(artifact_id=new_id, **changes)
  (registry_dir / f"{new_id}.json").write_text(json.dumps(record))
  return record


def test_errors_name_the_artifact_and_problem(policy_artifact, tmp_path):
  registry_dir, artifact_id = policy_artifact
  local = tmp_path / "artifacts"
  shutil.copytree(registry_dir, local)
  with pytest.raises(FileNotFoundError, match=r"'nope@0' is not registered.*known: \[.*sft_policy@"):
    policy_loading.load_policy(local, "nope@0")
  _copy_record(local, artifact_id, "rm@1", kind="reward_model")
  with pytest.raises(ValueError, match=r"'rm@1' is of kind 'reward_model', not 'policy'"):
    policy_loading.load_policy(local, "rm@1")
  _copy_record(local, artifact_id, "tok@2", tokenizer_id="sentencepiece@000000000000")
  with pytest.raises(ValueError, match=r"'tok@2'.*trained with 'sentencepiece@000000000000'"):
    policy_loading.load_policy(local, "tok@2")
  record = _copy_record(local, artifact_id, "small@3")
  record["model_config"]["vocab_size"] = 16
  (local / "small@3.json").write_text(json.dumps(record))
  with pytest.raises(ValueError, match=r"'small@3': tokenizer has \d+ pieces, more than the model's vocab_size 16"):
    policy_loading.load_policy(local, "small@3")
  _copy_record(local, artifact_id, "bare@4", params_path="")
  with pytest.raises(ValueError, match=r"'bare@4': its record lacks \['params_path'\]"):
    policy_loading.load_policy(local, "bare@4")
