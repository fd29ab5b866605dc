"""Tests for rlhf_jax.checkpointing (manager and artifacts)."""
import hashlib
import logging
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax import sharding
from rlhf_jax.algorithms import train_state
from rlhf_jax.checkpointing import artifacts
from rlhf_jax.checkpointing.manager import CheckpointManager
from testdata import toy_train


def _small_state(value: float = 0.0):
  params = {"w": jnp.arange(6.0).reshape(2, 3) + value, "b": jnp.ones((3,)) * value}
  return train_state.TrainState(step=jnp.asarray(5, jnp.int32), params=params,
                                opt_state={"count": jnp.asarray(5, jnp.int32)})


def _target(state):
  return train_state.abstract_like(state)


# ----------------------------------------------------------------------------- artifacts


def test_content_hash_definition_and_sensitivity():
  tree = {"b": np.array([1.0, 2.0], np.float32), "a": np.arange(3, dtype=np.int32)}
  want = hashlib.sha256()
  for path, array in (("['a']", tree["a"]), ("['b']", tree["b"])):  # sorted dict keys
    want.update(path.encode() + b"\0" + array.dtype.name.encode() + b"\0")
    want.update(",".join(map(str, array.shape)).encode() + b"\0" + array.tobytes() + b"\0")
  want.update(b'{"lr":0.1}')
  assert artifacts.content_hash(tree, {"lr": 0.1}) == want.hexdigest()
  flipped = {"a": tree["a"], "b": tree["b"].copy()}
  flipped["b"].view(np.uint32)[0] ^= 1  # one bit
  assert artifacts.content_hash(flipped, {"lr": 0.1}) != want.hexdigest()
  assert artifacts.content_hash(tree, {"lr": 0.2}) != want.hexdigest()
  assert artifacts.content_hash(tree) != artifacts.content_hash(tree, {"lr": 0.1})
  assert artifacts.artifact_id("policy", want.hexdigest()) == f"policy-{want.hexdigest()[:16]}"


def test_content_hash_ignores_sharding():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  x = np.arange(32, dtype=np.float32).reshape(8, 4)
  sharded = jax.device_put(x, sharding.batch_sharding(mesh, 2))
  assert artifacts.content_hash({"x": sharded}) == artifacts.content_hash({"x": x})
  key = jax.random.key(7)
  assert artifacts.content_hash({"k": key}) == artifacts.content_hash(
      {"k": jax.random.key_data(key)})


def test_to_jsonable_config_and_errors():
  cfg = ml_collections.ConfigDict({"opt": {"lr": 1e-3, "patterns": ("bias", "norm")},
                                   "dtype": jnp.bfloat16, "n": np.int64(3)})
  assert artifacts.to_jsonable(cfg) == {"opt": {"lr": 1e-3, "patterns": ["bias", "norm"]},
                                        "dtype": "bfloat16", "n": 3}
  with pytest.raises(TypeError, match=r"config\.opt\.fn"):
    artifacts.to_jsonable({"opt": {"fn": object()}}, field="config")
  for state in (b"\x00\xffgrain", "text", {"index": 3}):
    assert artifacts.decode_iterator_state(artifacts.encode_iterator_state(state)) == state


def test_code_version_and_metadata():
  version = artifacts.code_version()
  assert version.startswith("git:") or version.startswith("rlhf_jax==")
  meta = artifacts.build_metadata(config={"a": 1}, seed=3, dataset_ids=["hh-rlhf@1"],
                                  extra={"note": "x"})
  assert meta["config"] == {"a": 1} and meta["seed"] == 3 and meta["dataset_ids"] == ["hh-rlhf@1"]
  assert meta["code_version"] == version and meta["note"] == "x"


# ----------------------------------------------------------------------------- manager


def test_save_restore_round_trip(tmp_path):
  state = _small_state(1.5)
  key = jax.random.key(11)
  config = ml_collections.ConfigDict({"lr": 0.1, "layers": (1, 2)})
  with CheckpointManager(tmp_path, max_to_keep=2, name="toy") as manager:
    manager.save(5, state, data_iter_state=b"\x01\x02pos", rng_key=key, config=config,
                 metadata={"seed": 4, "dataset_ids": ["synthetic"]}, metrics={"loss/total": 0.25})
    manager.wait()
    restored, extras = manager.restore_latest(_target(_small_state()))
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert extras.step == 5 and extras.data_iter_state == b"\x01\x02pos"
  assert jax.dtypes.issubdtype(extras.rng_key.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(extras.rng_key), jax.random.key_data(key))
  assert extras.config == {"lr": 0.1, "layers": [1, 2]}
  assert extras.metrics == {"loss/total": 0.25}
  meta = extras.metadata
  assert meta["seed"] == 4 and meta["dataset_ids"] == ["synthetic"] and meta["step"] == 5
  assert meta["code_version"] == artifacts.code_version()
  digest = artifacts.content_hash({"rng": jax.random.key_data(key), "state": state},
                                  {"lr": 0.1, "layers": [1, 2]})
  assert meta["content_hash"] == f"sha256:{digest}"
  assert meta["artifact_id"] == f"toy-{digest[:16]}"


def test_raw_uint32_key_round_trips(tmp_path):
  with CheckpointManager(tmp_path, async_save=False) as manager:
    manager.save(1, _small_state(), rng_key=jax.random.PRNGKey(3))
    _, extras = manager.restore(1, _target(_small_state()))
  assert extras.rng_key.dtype == jnp.uint32
  np.testing.assert_array_equal(extras.rng_key, jax.random.PRNGKey(3))
  assert extras.data_iter_state is None


@pytest.mark.parametrize("mode,best", [("max", 2), ("min", 4)])
def test_keeps_last_n_plus_best(tmp_path, mode, best):
  values = {1: 0.5, 2: 0.9, 3: 0.3, 4: 0.1, 5: 0.4, 6: None, 7: 0.2}
  with CheckpointManager(tmp_path, max_to_keep=2, keep_best_metric="eval/score",
                         best_mode=mode) as manager:
    for step, value in values.items():
      metrics = {} if value is None else {"eval/score": value}
      manager.save(step, _small_state(step), metrics=metrics)
    manager.wait()
    assert manager.all_steps() == sorted({best, 6, 7})
    assert manager.best_step() == best
  with CheckpointManager(tmp_path, max_to_keep=2, keep_best_metric="eval/score",
                         best_mode=mode) as reopened:  # retention survives a restart
    assert reopened.best_step() == best
    reopened.save(8, _small_state(8), metrics={"eval/score": 0.35})
    reopened.wait()
    assert reopened.all_steps() == sorted({best, 7, 8})


def test_keep_last_n_without_best_metric(tmp_path):
  with CheckpointManager(tmp_path, max_to_keep=2) as manager:
    for step in range(1, 5):
      manager.save(step, _small_state(step), metrics={"eval/score": float(step)})
    manager.wait()
    assert manager.all_steps() == [3, 4] and manager.best_step() is None


def test_delete_removes_one_step_and_names_missing_ones(tmp_path):
  with CheckpointManager(tmp_path, max_to_keep=3) as manager:
    for step in (1, 2, 3):
      manager.save(step, _small_state(step))
    manager.delete(2)  # waits for the async saves first
    assert manager.all_steps() == [1, 3]
    with pytest.raises(ValueError, match=r"no checkpoint at step 2 .*\[1, 3\]"):
      manager.delete(2)
    restored, _ = manager.restore(3, _target(_small_state()))
    np.testing.assert_array_equal(restored.params["b"], np.full((3,), 3.0))


def test_partial_tmp_checkpoint_is_reported_and_removed(tmp_path, caplog):
  with CheckpointManager(tmp_path, async_save=False) as manager:
    manager.save(3, _small_state(3))
  shutil.copytree(tmp_path / "3", tmp_path / "6.orbax-checkpoint-tmp")  # an interrupted save
  (tmp_path / "6.orbax-checkpoint-tmp" / "commit_success.txt").unlink()
  with caplog.at_level(logging.WARNING):
    manager = CheckpointManager(tmp_path)
  assert "Partial checkpoint" in caplog.text and "6.orbax-checkpoint-tmp" in caplog.text
  assert [p.name for p in manager.partial_checkpoints] == ["6.orbax-checkpoint-tmp"]
  assert manager.all_steps() == [3]
  _, extras = manager.restore_latest(_target(_small_state()))
  assert extras.step == 3
  manager.close()
  assert not (tmp_path / "6.orbax-checkpoint-tmp").exists()


def test_unreadable_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  with CheckpointManager(tmp_path, max_to_keep=3) as manager:
    manager.save(3, _small_state(3), data_iter_state={"index": 3})
    manager.save(6, _small_state(6), data_iter_state={"index": 6})
  shutil.rmtree(tmp_path / "6" / "state")  # committed, then lost its arrays
  with CheckpointManager(tmp_path, max_to_keep=3) as manager, caplog.at_level(logging.WARNING):
    restored, extras = manager.restore_latest(_target(_small_state()))
    assert extras.step == 3 and extras.data_iter_state == {"index": 3}
    np.testing.assert_array_equal(restored.params["b"], np.full((3,), 3.0, np.float32))
    assert manager.skipped_steps == [6] and manager.all_steps() == [3]
    assert "step 6" in caplog.text and "partial or unreadable" in caplog.text
    manager.save(6, _small_state(6))  # the step can be saved again
  assert (tmp_path / "_quarantine").is_dir()


def test_missing_commit_marker_is_partial(tmp_path):
  with CheckpointManager(tmp_path, async_save=False) as manager:
    manager.save(2, _small_state(2))
    manager.save(4, _small_state(4))
  (tmp_path / "4" / "commit_success.txt").unlink()
  with CheckpointManager(tmp_path) as manager:
    _, extras = manager.restore_latest(_target(_small_state()))
  assert extras.step == 2


def test_verify_hash_detects_changed_content(tmp_path):
  with CheckpointManager(tmp_path, async_save=False) as manager:
    manager.save(1, _small_state(1.0), config={"a": 1})
  with CheckpointManager(tmp_path, verify_hash=True) as manager:
    manager.restore(1, _target(_small_state()))  # intact: passes
    # Restoring into a different dtype changes the restored bytes: the hash must notice.
    target = _target(_small_state())
    target = target.replace(params={"w": jax.ShapeDtypeStruct((2, 3), jnp.bfloat16,
                                                               sharding=target.params["w"].sharding),
                                    "b": target.params["b"]})
    with pytest.raises(ValueError, match="content hash"):
      manager.restore(1, target)


def test_restore_onto_a_different_mesh(tmp_path):
  mesh_a = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  parts = toy_train.build(mesh_a, total_steps=4)
  state = parts["state"]
  with CheckpointManager(tmp_path, async_save=False) as manager:
    manager.save(0, state, rng_key=jax.random.key(0))
  want = jax.device_get(state)
  for axes in ({"data": 4, "fsdp": 2, "tensor": 1}, None):
    mesh_b = sharding.make_mesh(axes) if axes else sharding.single_device_mesh()
    target = train_state.abstract_train_state(parts["init_fn"], parts["tx"], mesh_b,
                                              sharding.DEFAULT_RULES, *parts["init_args"])
    with CheckpointManager(tmp_path) as manager:
      restored, _ = manager.restore_latest(target)
    kernel = restored.params["in_proj"]["kernel"]
    assert kernel.sharding == target.params["in_proj"]["kernel"].sharding
    assert kernel.sharding.mesh.shape == mesh_b.shape
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_constructor_validation(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep"):
    CheckpointManager(tmp_path, max_to_keep=0)
  with pytest.raises(ValueError, match="best_mode"):
    CheckpointManager(tmp_path, best_mode="largest")
