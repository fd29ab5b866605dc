"""Tests for reward-model ensembles (rlhf_jax.algorithms.ensemble) on the `test` model preset."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rlhf_jax import models, sharding
from rlhf_jax.algorithms import ensemble, optimizer, reward_model as rm, train_state

CFG = models.get_model_config("test")
NUM_MEMBERS = 3
NUM_PAIRS = 8
STEPS = 2


def _batch():
  rng = np.random.default_rng(1)
  examples = [{"prompt_ids": rng.integers(4, CFG.vocab_size, 3),
               "chosen_ids": rng.integers(4, CFG.vocab_size, int(rng.integers(1, 6))),
               "rejected_ids": rng.integers(4, CFG.vocab_size, int(rng.integers(1, 6))),
               "weight": 0.5 + (i % 3), "tie": i == 4} for i in range(NUM_PAIRS)]
  return rm.collate_reward_batch(examples, buckets=(12,), pad_id=0)


def _optimizer():
  ocfg = optimizer.optimizer_config_defaults()
  # Tight clipping and weight decay on: both must act per member for the equality to hold.
  ocfg.update(lr=1e-3, warmup_steps=0, decay="constant", weight_decay=0.1, grad_clip_norm=0.5)
  return optimizer.make_optimizer(ocfg)


def _loss_fn(model):
  cfg = ml_collections.ConfigDict(dict(label_smoothing=0.05, center_coef=0.01, use_margin=False,
                                       use_weights=True, use_ties=True))
  return rm.make_loss_fn(rm.make_score_fn(model), cfg)


@pytest.fixture(scope="module")
def built():
  mesh = sharding.single_device_mesh()
  model = models.ScalarModel(CFG, mesh, sharding.DEFAULT_RULES)
  init_fn = lambda k: models.init_params(model, k)  # noqa: E731
  tx, schedule = _optimizer()
  keys = jax.random.split(jax.random.key(0), NUM_MEMBERS)
  state, shardings, ens_tx = ensemble.create_ensemble_state(init_fn, tx, mesh,
                                                            sharding.DEFAULT_RULES, keys)
  return dict(mesh=mesh, model=model, init_fn=init_fn, tx=tx, schedule=schedule, keys=keys,
              state=state, shardings=shardings, ens_tx=ens_tx)


def test_members_are_stacked_initialised_differently_and_sharded(built):
  params = built["state"].params
  head_MxDx1 = np.asarray(params["head"]["kernel"])
  assert head_MxDx1.shape == (NUM_MEMBERS, CFG.d_model, 1)
  for a in range(NUM_MEMBERS):
    for b in range(a + 1, NUM_MEMBERS):
      assert np.max(np.abs(head_MxDx1[a] - head_MxDx1[b])) > 1e-3
  # Member m is exactly the single model initialised with key m.
  single = jax.jit(lambda k: nn.unbox(built["init_fn"](k)))(built["keys"][1])
  for got, want in zip(jax.tree.leaves(ensemble.member(params, 1)), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
  # The members axis carries its logical name (replicated by the default rules).
  assert built["shardings"].params["head"]["kernel"].spec == P(None, "fsdp", None)
  # One Adam count per member.
  counts = [x for x in jax.tree.leaves(built["state"].opt_state) if x.dtype == jnp.int32]
  assert counts and all(c.shape == (NUM_MEMBERS,) for c in counts)


def test_members_axis_follows_the_sharding_rules():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = tuple((k, "data") if k == "members" else (k, v) for k, v in sharding.DEFAULT_RULES)
  model = models.ScalarModel(CFG, mesh, rules)
  abstract = jax.eval_shape(ensemble.stacked_init(lambda k: models.init_params(model, k)),
                            jax.random.split(jax.random.key(0), 2))
  shardings = sharding.logical_shardings(abstract, mesh, rules)
  assert shardings["decoder"]["layer_0"]["mlp"]["wi_gate"]["kernel"].spec == P(
      "data", "fsdp", "tensor")


def test_bootstrap_counts_are_multinomial_resamples():
  counts = np.asarray(ensemble.bootstrap_counts(jax.random.key(3), 4, 16))
  assert counts.shape == (4, 16)
  np.testing.assert_array_equal(counts.sum(axis=1), 16)
  assert np.all(counts == np.round(counts)) and counts.min() >= 0
  assert len({tuple(c) for c in counts}) == 4  # members see different resamples


@pytest.fixture(scope="module")
def single(built):
  """The single-model step (compiled once for both parametrisations below)."""
  _, shardings = train_state.create_train_state(built["init_fn"], built["tx"], built["mesh"],
                                                sharding.DEFAULT_RULES, built["keys"][0])
  step = rm.make_step(_loss_fn(built["model"]), built["tx"], state_shardings=shardings,
                      batch_shardings=rm.batch_shardings(built["mesh"]), mesh=built["mesh"],
                      schedule_fn=built["schedule"])
  return {"shardings": shardings, "step": step}


@pytest.mark.parametrize("bootstrap", [False, True])
def test_vmapped_ensemble_step_equals_members_trained_one_by_one(built, single, bootstrap):
  mesh, tx, schedule = built["mesh"], built["tx"], built["schedule"]
  loss_fn = _loss_fn(built["model"])
  batch_sh = rm.batch_shardings(mesh)
  batch = sharding.put_batch(_batch(), mesh)
  step_keys = [jax.random.key(100 + i) for i in range(STEPS)]

  ens_step = ensemble.make_ensemble_step(loss_fn, built["ens_tx"],
                                         state_shardings=built["shardings"],
                                         batch_shardings=batch_sh, mesh=mesh, bootstrap=bootstrap,
                                         schedule_fn=schedule)
  state = jax.tree.map(jnp.copy, built["state"])  # the fixture's state must survive donation
  ens_metrics = []
  for key in step_keys:
    state, metrics = ens_step(state, batch, key)
    ens_metrics.append(jax.device_get(metrics))
  assert ens_step._cache_size() == 1  # pylint: disable=protected-access

  # Reference: each member alone with the plain optimiser, the single-model step, key
  # fold_in(step_key, m) and (with bootstrap) its resample counts folded into the weights.
  single_sh, single_step = single["shardings"], single["step"]
  host_batch = _batch()
  member_losses = np.zeros((STEPS, NUM_MEMBERS))
  for m in range(NUM_MEMBERS):
    params = jax.device_put(ensemble.member(built["state"].params, m), single_sh.params)
    s = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               opt_state=jax.jit(tx.init, out_shardings=single_sh.opt_state)(params))
    for i, key in enumerate(step_keys):
      b = host_batch
      if bootstrap:
        counts = np.asarray(ensemble.bootstrap_counts(key, NUM_MEMBERS, NUM_PAIRS))[m]
        b = b._replace(weight_B=b.weight_B * counts)
      s, metrics = single_step(s, sharding.put_batch(b, mesh), jax.random.fold_in(key, m))
      member_losses[i, m] = float(metrics["loss/total"])
    for got, want in zip(jax.tree.leaves(ensemble.member(state.params, m)),
                         jax.tree.leaves(s.params)):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  for i in range(STEPS):
    np.testing.assert_allclose(float(ens_metrics[i]["loss/total"]), member_losses[i].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(float(ens_metrics[i]["loss/member_std"]), member_losses[i].std(),
                               atol=1e-5)


def test_ensemble_scores_are_member_mean_and_std(built):
  params = built["state"].params
  score_fn = rm.make_score_fn(models.ScalarModel(CFG))
  b = _batch()
  rows = [x.reshape((2 * NUM_PAIRS,) + x.shape[2:]) for x in
          (b.tokens_Bx2xL, b.positions_Bx2xL, b.segment_ids_Bx2xL, b.last_index_Bx2)]
  scores_MxN = np.asarray(jax.jit(ensemble.ensemble_score_fn(score_fn))(params, *rows))
  single = jax.jit(score_fn)
  for m in range(NUM_MEMBERS):
    np.testing.assert_allclose(scores_MxN[m], single(ensemble.member(params, m), *rows),
                               atol=1e-5)
  mean_N, std_N = ensemble.mean_and_std(jnp.asarray(scores_MxN))
  np.testing.assert_allclose(mean_N, scores_MxN.astype(np.float64).mean(axis=0), atol=1e-6)
  np.testing.assert_allclose(std_N, scores_MxN.astype(np.float64).std(axis=0), atol=1e-6)
  assert np.all(np.asarray(std_N) > 0)  # members disagree
