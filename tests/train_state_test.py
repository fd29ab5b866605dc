"""Tests for rlhf_jax.algorithms.train_state on the toy model of tests/testdata/toy_train.py."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from rlhf_jax import sharding
from rlhf_jax.algorithms import optimizer, train_state
from testdata import toy_train


@pytest.fixture(scope="module")
def mesh8():
  return sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


@pytest.fixture(scope="module")
def toy8(mesh8):
  return toy_train.build(mesh8, total_steps=6, num_micro_batches=2)


def test_state_is_created_sharded_by_the_logical_rules(toy8, mesh8):
  state, shardings = toy8["state"], toy8["shardings"]
  assert state.step.dtype == jnp.int32 and int(state.step) == 0
  kernel = state.params["in_proj"]["kernel"]
  assert kernel.sharding.spec == P("fsdp", "tensor") and kernel.sharding.mesh == mesh8
  assert state.params["out_proj"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert state.params["norm"]["scale"].sharding.spec == P(None)
  assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (4, 8)
  # Optimiser moments mirror the parameter shardings; Adam's count is replicated on all devices.
  for leaf, want in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(shardings.opt_state)):
    assert leaf.sharding == want
  mu = state.opt_state[1][0].mu  # chain(clip, adamw(chain(scale_by_adam, ...)))
  assert mu["in_proj"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert state.opt_state[1][0].count.sharding.is_fully_replicated
  # Same values as a plain eager init (threefry is partitionable: sharding-invariant; eager vs
  # fused jit arithmetic may differ in the last bit).
  plain = nn.unbox(toy8["init_fn"](*toy8["init_args"]))
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


def test_abstract_train_state_matches_and_allocates_nothing(toy8, mesh8):
  abstract = train_state.abstract_train_state(toy8["init_fn"], toy8["tx"], mesh8,
                                              sharding.DEFAULT_RULES, *toy8["init_args"])
  leaves = jax.tree.leaves(abstract)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert jax.tree.structure(abstract) == jax.tree.structure(toy8["state"])
  for a, x in zip(leaves, jax.tree.leaves(toy8["state"])):
    assert (a.shape, a.dtype, a.sharding) == (x.shape, x.dtype, x.sharding)
  like = train_state.abstract_like(toy8["state"])
  assert jax.tree.leaves(like) == leaves


def test_apply_gradients_matches_optax_and_counts_steps():
  tx = optax.adamw(0.1, weight_decay=0.01)
  params = {"w": jnp.arange(6.0).reshape(2, 3)}
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 opt_state=tx.init(params))
  grads = {"w": jnp.full((2, 3), 0.5)}
  new = train_state.apply_gradients(state, grads, tx)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(new.params["w"], params["w"] + updates["w"], rtol=1e-7)
  assert int(new.step) == 1 and int(train_state.apply_gradients(new, grads, tx).step) == 2


def test_train_step_reports_loss_grad_norm_and_lr():
  mesh = sharding.single_device_mesh()
  parts = toy_train.build(mesh, total_steps=6, num_micro_batches=1)
  batch = next(toy_train.ToyData(0, 8))
  key = jax.random.key(0)
  params = parts["state"].params
  (loss_sum, (count, _)), grads = jax.jit(jax.value_and_grad(
      lambda p: parts["loss_fn"](p, jax.tree.map(jnp.asarray, batch), key), has_aux=True))(params)
  _, metrics = parts["step_fn"](parts["state"], batch, key)
  np.testing.assert_allclose(metrics["loss/total"], loss_sum / count, rtol=1e-6)
  want_norm = np.sqrt(sum(np.sum(np.square(np.asarray(g) / float(count)))
                          for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(metrics["optim/grad_norm"], want_norm, rtol=1e-5)
  assert float(metrics["optim/lr"]) == 0.0  # step 0 of a 2-step warm-up


def _train(parts, num_steps, batch_size=8):
  data = toy_train.ToyData(0, batch_size)
  state, losses = parts["state"], []
  for step in range(num_steps):
    state, metrics = parts["step_fn"](state, next(data), jax.random.fold_in(jax.random.key(9), step))
    losses.append(float(metrics["loss/total"]))
  return state, losses


def test_sharded_training_equals_single_device_without_recompiling(toy8):
  single = toy_train.build(sharding.single_device_mesh(), total_steps=6, num_micro_batches=2)
  state_1, losses_1 = _train(single, 4)
  state_8, losses_8 = _train(dict(toy8), 4)
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_8.params), jax.tree.leaves(state_1.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
  initial = nn.unbox(single["init_fn"](*single["init_args"]))
  assert not np.allclose(state_1.params["in_proj"]["kernel"], initial["in_proj"]["kernel"])
  assert int(state_8.step) == 4
  assert state_8.params["in_proj"]["kernel"].sharding == toy8["shardings"].params["in_proj"]["kernel"]
  assert toy8["step_fn"]._cache_size() == 1  # pylint: disable=protected-access
  assert single["step_fn"]._cache_size() == 1  # pylint: disable=protected-access


def test_bfloat16_compute_keeps_float32_master_params():
  mesh = sharding.single_device_mesh()
  model = toy_train.make_model()
  cfg = toy_train.toy_optimizer_config(4)
  tx, schedule = optimizer.make_optimizer(cfg)
  init_fn = lambda key, x: model.init(key, x)["params"]  # pylint: disable=unnecessary-lambda-assignment
  x = jnp.zeros((1, toy_train.LENGTH, toy_train.FEATURES))
  state, _ = train_state.create_train_state(init_fn, tx, mesh, sharding.DEFAULT_RULES,
                                            jax.random.key(0), x)
  loss_fn = functools.partial(toy_train.token_loss, model=model)
  step = jax.jit(train_state.make_train_step(loss_fn, tx, num_micro_batches=2,
                                             compute_dtype=jnp.bfloat16, schedule_fn=schedule))
  batch = next(toy_train.ToyData(0, 8))
  new_state, metrics = step(state, batch, jax.random.key(1))
  new_state, metrics = step(new_state, batch, jax.random.key(1))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(new_state.params))
  assert np.isfinite(float(metrics["loss/total"]))
