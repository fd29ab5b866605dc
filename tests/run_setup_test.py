"""Tests for the helpers every trainer shares (rlhf_jax/algorithms/run_setup.py)."""
import ml_collections
import pytest

from rlhf_jax import models
from rlhf_jax.algorithms import optimizer, run_setup
from rlhf_jax.checkpointing import registry
from rlhf_jax.config import mesh_section, model_section, tokenizer_section
from rlhf_jax.data.tokenizer import Tokenizer


def _config(**batch):
  config = ml_collections.ConfigDict()
  config.mesh = mesh_section()
  config.batch = ml_collections.ConfigDict(dict(global_batch_size=16, micro_batch_size=0))
  config.batch.update(batch)
  config.optimizer = optimizer.optimizer_config_defaults()
  config.model = model_section("test", vocab_size=-1)
  config.tokenizer = tokenizer_section()
  return config


def test_padded_chunks_top_up_the_last_chunk_with_its_last_record():
  assert run_setup.padded_chunks("abcde", 2) == [(["a", "b"], 2), (["c", "d"], 2),
                                                 (["e", "e"], 1)]
  assert run_setup.padded_chunks([1, 2, 3, 4], 4) == [([1, 2, 3, 4], 4)]
  assert run_setup.padded_chunks([], 3) == []
  with pytest.raises(ValueError, match="chunk size must be positive"):
    run_setup.padded_chunks([1], 0)


def test_derive_run_sizes_checks_mesh_batch_and_optimizer():
  sizes = run_setup.derive_run_sizes(_config(micro_batch_size=8), num_devices=8, num_processes=2)
  assert sizes.mesh_shape == {"data": 8, "fsdp": 1, "tensor": 1}
  assert (sizes.batch.per_host_batch_size, sizes.batch.num_micro_batches) == (8, 2)
  with pytest.raises(ValueError, match=r"batch.global_batch_size=12.*divisible"):
    run_setup.derive_run_sizes(_config(global_batch_size=12), num_devices=8, num_processes=1)
  config = _config()
  config.mesh.tensor = 3
  with pytest.raises(ValueError, match=r"mesh.data=-1, mesh.fsdp=1, mesh.tensor=3 on 8 devices"):
    run_setup.derive_run_sizes(config, num_devices=8, num_processes=1)
  config = _config()
  config.optimizer.compute_dtype = "bfloat16"
  with pytest.raises(ValueError, match="optimizer.compute_dtype .* must equal model.compute_dtype"):
    run_setup.derive_run_sizes(config, num_devices=8, num_processes=1)


def test_resolve_policy_record_names_the_field_and_the_missing_key(tmp_path):
  assert run_setup.resolve_policy_record("", tmp_path) is None
  record = {"artifact_id": "p@000000000001", "kind": "policy", "params_path": "/x",
            "model_config": {}, "tokenizer_path": "/t.model"}
  registry.register(tmp_path, record)
  assert run_setup.resolve_policy_record("p@000000000001", tmp_path)["params_path"] == "/x"
  registry.register(tmp_path, {"artifact_id": "bare@000000000002", "kind": "policy"})
  with pytest.raises(ValueError, match=r"init.policy 'bare@000000000002': its record lacks "
                                       r"'params_path'"):
    run_setup.resolve_policy_record("bare@000000000002", tmp_path, field="init.policy")
  with pytest.raises(FileNotFoundError):
    run_setup.resolve_policy_record("missing@000000000003", tmp_path)


def test_tokenizer_and_model_config_from_a_record_or_from_the_config(tmp_path, testdata_dir):
  tok_path = str(testdata_dir / "tokenizer_512.model")
  config = _config()
  config.tokenizer.path = tok_path
  scratch = run_setup.tokenizer_and_model_config(config, tmp_path, None, lambda: [])
  assert scratch.tokenizer_path == tok_path
  assert scratch.model_config.vocab_size == scratch.tokenizer.vocab_size == 512  # -1 filled in
  # From a record: its tokenizer and model config; only compute_dtype and remat come from config.
  recorded = models.get_model_config("test", vocab_size=600)
  config.model.compute_dtype, config.model.remat = "bfloat16", True
  record = {"model_config": recorded.to_dict(), "tokenizer_path": tok_path}
  init = run_setup.tokenizer_and_model_config(config, tmp_path, record, lambda: [])
  assert init.tokenizer.id == Tokenizer.load(tok_path).id and init.tokenizer_path == tok_path
  assert init.model_config == recorded.replace(compute_dtype="bfloat16", remat=True)
  # No path: the run trains its own tokenizer and keeps it in the workdir.
  own = run_setup.tokenizer_file(tokenizer_section(), tmp_path)
  assert own == str(tmp_path / "tokenizer.model")
