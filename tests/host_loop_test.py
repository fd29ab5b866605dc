"""Tests for rlhf_jax.algorithms.host_loop and rlhf_jax.algorithms.metrics."""
import functools
import logging
import math
import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import sharding
from rlhf_jax.algorithms import host_loop, metrics, train_state
from rlhf_jax.checkpointing import CheckpointManager
from testdata import toy_train


def _tensorboard_scalars(logdir: pathlib.Path) -> dict[str, dict[int, float]]:
  """Reads scalars back from tensorboardX event files (TFRecord framing, no TensorFlow)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out: dict[str, dict[int, float]] = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      record = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event.FromString(record)
      for value in event.summary.value:
        out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


def _tokens(batch) -> int:
  return int(batch["mask_BxL"].sum())


def test_run_loop_writes_metrics_evaluates_and_checkpoints(tmp_path, caplog):
  mesh = sharding.single_device_mesh()
  parts = toy_train.build(mesh, total_steps=5)
  eval_batch = next(toy_train.ToyData(99, 8))
  eval_calls = []
  eval_loss = jax.jit(lambda params: parts["loss_fn"](params, eval_batch))

  def eval_fn(state, step):
    eval_calls.append(step)
    loss_sum, (count, _) = eval_loss(state.params)
    return {"loss": loss_sum / count, "eval/count": count}

  writer = metrics.make_writers(tmp_path, log_every=2)
  with CheckpointManager(tmp_path / "ckpt", max_to_keep=5) as manager, \
      caplog.at_level(logging.INFO):
    result = host_loop.run_loop(
        state=parts["state"], step_fn=parts["step_fn"], batches=toy_train.ToyData(0, 8),
        total_steps=5, base_key=jax.random.key(1), writer=writer, checkpoint_manager=manager,
        checkpoint_every=2, eval_fn=eval_fn, eval_every=3, tokens_fn=_tokens, mesh=mesh,
        config={"total_steps": 5}, show_progress=False)
    assert manager.all_steps() == [2, 4, 5]
    _, extras = manager.restore(4, train_state.abstract_like(result.state))
    assert extras.data_iter_state == {"index": 4} and extras.config == {"total_steps": 5}
    assert extras.metrics["loss/total"] == pytest.approx(result.history[3]["loss/total"])
  writer.close()
  assert "Device topology" in caplog.text and "mesh={'data': 1, 'fsdp': 1, 'tensor': 1}" in caplog.text
  assert int(result.state.step) == 5 and result.start_step == 0
  assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5]
  assert eval_calls == [3, 5]
  assert "eval/loss" in result.history[2] and "eval/count" in result.history[4]
  assert "eval/loss" not in result.history[3]
  for record in result.history[1:]:
    assert record["perf/tokens_per_sec"] > 0 and record["perf/steps_per_sec"] > 0
  assert all(math.isfinite(h["loss/total"]) for h in result.history)

  jsonl = metrics.read_jsonl(tmp_path / "metrics.jsonl")
  train_rows = [r for r in jsonl if "loss/total" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5]
  assert train_rows[2]["loss/total"] == pytest.approx(result.history[2]["loss/total"])
  assert [r["step"] for r in jsonl if "eval/loss" in r] == [3, 5]

  scalars = _tensorboard_scalars(tmp_path / "tensorboard")
  assert sorted(scalars["loss/total"]) == [1, 2, 3, 4, 5]
  assert scalars["loss/total"][4] == pytest.approx(result.history[3]["loss/total"], rel=1e-6)
  assert sorted(scalars["eval/loss"]) == [3, 5] and "optim/lr" in scalars


def test_step_n_is_dispatched_before_step_n_minus_1_metrics_are_fetched(monkeypatch):
  events = []
  real_device_get = jax.device_get

  def step_fn(state, batch, key):
    del batch, key
    events.append(("dispatch", int(state.step) + 1))
    return state.replace(step=state.step + 1), {"loss/total": jnp.float32(1.0),
                                                 "id": jnp.int32(int(state.step) + 1)}

  def device_get(tree):
    if isinstance(tree, dict) and "id" in tree:
      events.append(("fetch", int(tree["id"])))
    return real_device_get(tree)

  monkeypatch.setattr(host_loop.jax, "device_get", device_get)
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=())
  host_loop.run_loop(state=state, step_fn=step_fn, batches=iter(range(10)), total_steps=4,
                     base_key=jax.random.key(0), show_progress=False)
  assert events == [("dispatch", 1), ("dispatch", 2), ("fetch", 1), ("dispatch", 3), ("fetch", 2),
                    ("dispatch", 4), ("fetch", 3), ("fetch", 4)]


def test_non_finite_loss_stops_with_step_and_metric_and_is_never_saved(tmp_path):
  def step_fn(state, batch, key):
    del batch, key
    step = state.step + 1
    bad = jnp.where(step == 3, jnp.nan, 1.0)
    return state.replace(step=step, params={"w": state.params["w"] + bad}), {
        "loss/policy": bad, "kl/ref": jnp.float32(0.0)}

  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros(2)},
                                 opt_state=())
  with CheckpointManager(tmp_path, max_to_keep=10) as manager:
    with pytest.raises(host_loop.NonFiniteLossError,
                       match=r"non-finite loss at step 3: metric 'loss/policy' = nan") as info:
      host_loop.run_loop(state=state, step_fn=step_fn, batches=iter(range(10)), total_steps=6,
                         base_key=jax.random.key(0), checkpoint_manager=manager,
                         checkpoint_every=1, show_progress=False)
    assert info.value.step == 3 and info.value.metric == "loss/policy"
    assert manager.all_steps() == [1, 2]


def test_non_finite_check_only_looks_at_losses():
  host_loop.check_finite_losses(1, {"kl/ref": math.inf, "loss/total": 0.5})
  with pytest.raises(host_loop.NonFiniteLossError, match="metric 'loss' = inf"):
    host_loop.check_finite_losses(7, {"loss": math.inf})


def test_resume_in_process_equals_uninterrupted(tmp_path):
  mesh = sharding.single_device_mesh()

  def run(total, manager, writer=None):
    parts = toy_train.build(mesh, total_steps=6)
    return host_loop.run_loop(
        state=parts["state"], step_fn=parts["step_fn"], batches=toy_train.ToyData(0, 8),
        total_steps=total, base_key=jax.random.key(5), checkpoint_manager=manager,
        checkpoint_every=2, writer=writer, show_progress=False)

  with CheckpointManager(tmp_path / "straight") as manager:
    straight = run(6, manager)
  writer = metrics.JsonlWriter(tmp_path / "metrics.jsonl")
  with CheckpointManager(tmp_path / "split") as manager:
    run(3, manager, writer)  # ends with a checkpoint at 3 (the final one)
    writer.write_scalars(4, {"loss/total": 9.0})  # a line written after the checkpoint
    resumed = run(6, manager, writer)
  writer.close()
  assert resumed.start_step == 3 and [h["step"] for h in resumed.history] == [4, 5, 6]
  for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, 7))


def test_sharded_loop_with_put_batch_does_not_recompile():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  parts = toy_train.build(mesh, total_steps=4)
  result = host_loop.run_loop(
      state=parts["state"], step_fn=parts["step_fn"], batches=toy_train.ToyData(0, 8),
      total_steps=4, base_key=jax.random.key(1),
      put_batch=functools.partial(sharding.put_batch, mesh=mesh), show_progress=False)
  assert int(result.state.step) == 4
  assert parts["step_fn"]._cache_size() == 1  # pylint: disable=protected-access


def test_exhausted_iterator_and_missing_set_state_are_clear_errors(tmp_path):
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state=())
  step_fn = lambda s, b, k: (s.replace(step=s.step + 1), {"loss": jnp.float32(0.0)})  # pylint: disable=unnecessary-lambda-assignment
  with pytest.raises(RuntimeError, match="ran out before step 3 of 5"):
    host_loop.run_loop(state=state, step_fn=step_fn, batches=[0, 1], total_steps=5,
                       base_key=jax.random.key(0), show_progress=False)
  with CheckpointManager(tmp_path, async_save=False) as manager:
    manager.save(1, state.replace(step=jnp.ones((), jnp.int32)), data_iter_state={"index": 1})
    with pytest.raises(TypeError, match="has no set_state"):
      host_loop.run_loop(state=state, step_fn=step_fn, batches=iter([0, 1]), total_steps=2,
                         base_key=jax.random.key(0), checkpoint_manager=manager,
                         show_progress=False)


def test_to_scalars_validates_names_and_shapes():
  assert metrics.to_scalars({"loss/total": np.float32(0.5), "n": jnp.ones((1,))}) == {
      "loss/total": 0.5, "n": 1.0}
  with pytest.raises(ValueError, match="'loss total'"):
    metrics.to_scalars({"loss total": 1.0})
  with pytest.raises(ValueError, match=r"'rewards/chosen' must be a scalar, got shape \(2,\)"):
    metrics.to_scalars({"rewards/chosen": np.zeros(2)})


def test_jsonl_rewind_and_torn_lines(tmp_path):
  writer = metrics.JsonlWriter(tmp_path / "m.jsonl")
  for step in range(1, 5):
    writer.write_scalars(step, {"loss": float(step), "bad": math.nan})
  writer.flush()
  with open(tmp_path / "m.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 5, "lo')  # torn by a kill
  writer.rewind(2)
  writer.write_scalars(3, {"loss": 30.0})
  writer.close()
  rows = metrics.read_jsonl(tmp_path / "m.jsonl")
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
  assert math.isnan(rows[0]["bad"])
  (tmp_path / "broken.jsonl").write_text('{"step": 1}\nnot json\n')
  with pytest.raises(ValueError, match="broken.jsonl:2"):
    metrics.read_jsonl(tmp_path / "broken.jsonl")


def test_logging_writer_logs_every_nth_step_and_every_evaluation(caplog):
  writer = metrics.LoggingWriter(every=3)
  with caplog.at_level(logging.INFO, logger=metrics.logger.name):
    for step in range(1, 8):
      writer.write_scalars(step, {"loss/total": float(step)})
    writer.write_scalars(7, {"eval/loss": 0.5})
  logged = [r.getMessage() for r in caplog.records]
  assert logged == ["step 3: loss/total=3", "step 6: loss/total=6", "step 7: eval/loss=0.5"]
