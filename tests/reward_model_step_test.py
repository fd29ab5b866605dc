"""Tests for the reward-model step (rlhf_jax.algorithms.reward_model) on the `test` model preset."""
import functools

import flax.linen as nn
import jax
import jax.test_util
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax import models, sharding
from rlhf_jax.algorithms import optimizer, reward_model as rm, train_state
from rlhf_jax.data import batching

CFG = models.get_model_config("test")
NUM_PAIRS = 8
BUCKETS = (16,)
MARGIN = 0.4
EPS = 0.1
CENTER = 0.05


def _examples(seed=0, num=NUM_PAIRS):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(num):
    out.append({
        "id": f"ex{i}",
        "prompt_ids": rng.integers(4, CFG.vocab_size, int(rng.integers(2, 6))),
        "chosen_ids": rng.integers(4, CFG.vocab_size, int(rng.integers(1, 9))),
        "rejected_ids": rng.integers(4, CFG.vocab_size, int(rng.integers(1, 9))),
        "weight": [1.0, 0.5, 2.0, 0.0, 1.5, 1.0, 0.25, 3.0][i % 8],
        "confidence": 0.5 + 0.05 * i,
        "tie": i in (2, 5),
        "margin": MARGIN * (i % 3),
    })
  return out


def _loss_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(label_smoothing=EPS, center_coef=CENTER, use_margin=True,
                                       use_weights=True, use_ties=True))
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def setup():
  model = models.ScalarModel(CFG)
  params = jax.jit(lambda k: nn.unbox(models.init_params(model, k)))(jax.random.key(0))
  # Move the head away from its tiny init so that rewards differ clearly between rows.
  params["head"]["kernel"] = params["head"]["kernel"] * 20.0
  return model, params, rm.collate_reward_batch(_examples(), buckets=BUCKETS, pad_id=0)


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def test_pair_major_layout_matches_the_preference_rows():
  examples = _examples()
  pref = batching.collate_preferences(examples, buckets=BUCKETS, pad_id=0)
  batch = rm.collate_reward_batch(examples, buckets=BUCKETS, pad_id=0, use_confidence=True)
  np.testing.assert_array_equal(batch.tokens_Bx2xL[:, 0], pref.rows.tokens_BxL[:NUM_PAIRS])
  np.testing.assert_array_equal(batch.tokens_Bx2xL[:, 1], pref.rows.tokens_BxL[NUM_PAIRS:])
  np.testing.assert_array_equal(batch.last_index_Bx2[:, 1], pref.rows.last_index_B[NUM_PAIRS:])
  np.testing.assert_allclose(batch.weight_B, pref.weight_B * pref.confidence_B)
  np.testing.assert_allclose(batch.margin_B, [MARGIN * (i % 3) for i in range(NUM_PAIRS)])
  np.testing.assert_array_equal(batch.tie_B, [i in (2, 5) for i in range(NUM_PAIRS)])
  bad = _examples()
  bad[1]["weight"] = -1.0
  with pytest.raises(ValueError, match="weights must be finite and >= 0"):
    rm.collate_reward_batch(bad, buckets=BUCKETS, pad_id=0)


def _np_bt(r, examples, use_margin=True, use_weights=True, use_ties=True, eps=EPS, center=CENTER):
  """Float64 NumPy reference of the weighted BT loss (with every option) from rewards [B, 2]."""
  w = np.array([e["weight"] for e in examples]) if use_weights else np.ones(len(examples))
  m = np.array([e["margin"] for e in examples]) if use_margin else 0.0
  diff = r[:, 0] - r[:, 1]
  d = diff - m
  pair = -(1 - eps) * _np_log_sigmoid(d) - eps * _np_log_sigmoid(-d)
  if use_ties:
    tie = np.array([e["tie"] for e in examples])
    pair = np.where(tie, -0.5 * (_np_log_sigmoid(diff) + _np_log_sigmoid(-diff)), pair)
  return np.sum(w * pair) / np.sum(w) + center * np.mean((r[:, 0] + r[:, 1]) ** 2)


def test_margins_of_the_preference_batch_reach_the_loss():
  examples = _examples()
  pref = batching.collate_preferences(examples, buckets=BUCKETS, pad_id=0)
  want_margin = [MARGIN * (i % 3) for i in range(NUM_PAIRS)]
  np.testing.assert_allclose(pref.margin_B, want_margin)  # the data's "margin" field
  params = _toy_params()
  r = _toy_rewards(params, examples)
  loss_fn = rm.make_loss_fn(_toy_score_fn, _loss_config())

  @jax.jit
  def device_loss(batch):
    loss_sum, (den, _) = loss_fn(params, rm.rescale_weights(batch))
    return loss_sum / den

  mean_loss = lambda batch: float(device_loss(jax.tree.map(jnp.asarray, batch)))  # noqa: E731

  from_data = rm.reward_batch_from_preferences(pref)  # margin_B defaults to the batch's
  np.testing.assert_allclose(from_data.margin_B, want_margin)
  np.testing.assert_allclose(mean_loss(from_data), _np_bt(r, examples), rtol=1e-5)
  # An explicit margin_B replaces the data's: zeros give the margin-free loss, which differs.
  zero = rm.reward_batch_from_preferences(pref, margin_B=np.zeros(NUM_PAIRS))
  np.testing.assert_allclose(mean_loss(zero), _np_bt(r, examples, use_margin=False), rtol=1e-5)
  assert abs(_np_bt(r, examples) - _np_bt(r, examples, use_margin=False)) > 1e-3
  with pytest.raises(ValueError, match=r"margin_B has shape \(3,\), expected \(8,\)"):
    rm.reward_batch_from_preferences(pref, margin_B=np.zeros(3))


def _reference_rewards(model, params, examples):
  """Rewards [B, 2] from a plain causal forward of each row padded to 16 (no segment ids), read
  at the row's last real column by NumPy: right padding cannot change a causal model's outputs
  at earlier positions."""
  rows, last = [], []
  for e in examples:
    for key in ("chosen_ids", "rejected_ids"):
      ids = np.concatenate([e["prompt_ids"], e[key]])
      rows.append(np.pad(ids, (0, 16 - len(ids))))
      last.append(len(ids) - 1)
  values_NxL, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(np.stack(rows), jnp.int32))
  values_NxL = np.asarray(values_NxL, np.float64)
  return values_NxL[np.arange(len(rows)), last].reshape(len(examples), 2)


def test_loss_reads_the_last_real_token_and_matches_numpy(setup):
  model, params, batch = setup
  examples = _examples()
  r_want = _reference_rewards(model, params, examples)
  assert np.std(r_want) > 0.1  # rewards differ between rows
  loss_fn = rm.make_loss_fn(rm.make_score_fn(model), _loss_config())

  @jax.jit
  def run(p, b):
    loss_sum, (den, _) = loss_fn(p, rm.rescale_weights(b))
    return loss_sum / den, rm.pair_scores(rm.make_score_fn(model), p, b)

  loss, r_got = run(params, jax.tree.map(jnp.asarray, batch))
  np.testing.assert_allclose(np.asarray(r_got), r_want, atol=2e-5)
  np.testing.assert_allclose(float(loss), _np_bt(r_want, examples), rtol=2e-5)


def _toy_score_fn(params, tokens_NxL, positions_NxL, segment_ids_NxL, read_index_N):
  """A cheap stand-in reward: a token-embedding sum over the row plus a term read at the index."""
  real_NxL = (segment_ids_NxL > 0).astype(jnp.float32)
  total_N = jnp.sum(params["w"][tokens_NxL] * real_NxL * (1.0 + 0.1 * positions_NxL), axis=1)
  read_N = jnp.take_along_axis(params["v"][tokens_NxL], read_index_N[:, None], axis=1)[:, 0]
  return jnp.tanh(total_N) + read_N


def _toy_params():
  kw, kv = jax.random.split(jax.random.key(7))
  return {"w": 0.3 * jax.random.normal(kw, (CFG.vocab_size,)),
          "v": jax.random.normal(kv, (CFG.vocab_size,))}


def _toy_rewards(params, examples):
  out = np.zeros((len(examples), 2))
  w, v = np.asarray(params["w"], np.float64), np.asarray(params["v"], np.float64)
  for b, e in enumerate(examples):
    for j, key in enumerate(("chosen_ids", "rejected_ids")):
      ids = np.concatenate([e["prompt_ids"], e[key]])
      out[b, j] = np.tanh(np.sum(w[ids] * (1.0 + 0.1 * np.arange(len(ids))))) + v[ids[-1]]
  return out


@pytest.mark.parametrize("off", [{}, {"use_margin": False}, {"use_weights": False},
                                 {"use_ties": False}, {"label_smoothing": 0.0},
                                 {"center_coef": 0.0}])
def test_every_option_of_the_batch_and_config_enters_the_loss(off):
  examples = _examples()
  batch = rm.rescale_weights(jax.tree.map(jnp.asarray, rm.collate_reward_batch(
      examples, buckets=BUCKETS, pad_id=0)))
  params = _toy_params()
  loss_sum, (den, _) = rm.make_loss_fn(_toy_score_fn, _loss_config(**off))(params, batch)
  r = _toy_rewards(params, examples)
  ref = dict(use_margin=True, use_weights=True, use_ties=True, eps=EPS, center=CENTER)
  ref.update({{"label_smoothing": "eps", "center_coef": "center"}.get(k, k): v
              for k, v in off.items()})
  want = _np_bt(r, examples, **ref)
  np.testing.assert_allclose(float(loss_sum / den), want, rtol=1e-5)
  if off:  # switching the option off changes the answer
    assert abs(want - _np_bt(r, examples)) > 1e-3


def test_micro_batches_accumulate_the_exact_weighted_loss_and_gradient():
  examples = _examples()
  batch = rm.rescale_weights(jax.tree.map(jnp.asarray, rm.collate_reward_batch(
      examples, buckets=BUCKETS, pad_id=0)))
  loss_fn = rm.make_loss_fn(_toy_score_fn, _loss_config())
  params = _toy_params()
  grad = jax.jit(functools.partial(optimizer.accumulated_value_and_grad, loss_fn),
                 static_argnums=2)
  (loss1, _), g1 = grad(params, batch, 1)
  (loss4, _), g4 = grad(params, batch, 4)
  # Micro-batches have unequal weight sums: only the global-mean rescaling makes these agree.
  np.testing.assert_allclose(float(loss4), _np_bt(_toy_rewards(params, examples), examples),
                             rtol=1e-5)
  np.testing.assert_allclose(float(loss1), float(loss4), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_gradient_check_in_float64():
  batch = rm.rescale_weights(jax.tree.map(jnp.asarray, rm.collate_reward_batch(
      _examples(), buckets=BUCKETS, pad_id=0)))
  loss_fn = rm.make_loss_fn(_toy_score_fn, _loss_config())
  mean_loss = lambda p: (lambda s, aux: s / aux[0])(*loss_fn(p, batch))  # noqa: E731
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), _toy_params())
    jax.test_util.check_grads(jax.jit(mean_loss), (params64,), order=1, modes=["rev"], eps=1e-5,
                              atol=1e-6, rtol=1e-6)


def _make(mesh, params_init_key=0, lr=1e-3):
  model = models.ScalarModel(CFG, mesh, sharding.DEFAULT_RULES)
  ocfg = optimizer.optimizer_config_defaults()
  ocfg.update(lr=lr, warmup_steps=0, decay="constant", weight_decay=0.01)
  tx, schedule = optimizer.make_optimizer(ocfg)
  state, shardings = train_state.create_train_state(
      lambda k: models.init_params(model, k), tx, mesh, sharding.DEFAULT_RULES,
      jax.random.key(params_init_key))
  loss_fn = rm.make_loss_fn(rm.make_score_fn(model), _loss_config())
  step = rm.make_step(loss_fn, tx, state_shardings=shardings,
                      batch_shardings=rm.batch_shardings(mesh), mesh=mesh, num_micro_batches=2,
                      schedule_fn=schedule)
  return state, step


@pytest.fixture(scope="module")
def single_run(setup):
  _, _, batch = setup
  mesh = sharding.single_device_mesh()
  state, step = _make(mesh)
  history = []
  for i in range(4):
    state, metrics = step(state, sharding.put_batch(batch, mesh), jax.random.key(i))
    history.append(jax.device_get(metrics))
  return state, step, history


def test_jitted_step_learns_donates_and_compiles_once(single_run):
  state, step, history = single_run
  losses = [float(h["loss/total"]) for h in history]
  assert losses[-1] < losses[0] - 0.05, losses
  assert int(state.step) == 4
  assert step._cache_size() == 1  # pylint: disable=protected-access
  for key in ("loss/bradley_terry", "loss/center", "rewards/accuracy", "rewards/margin",
              "optim/grad_norm", "optim/lr"):
    assert key in history[0] and np.isfinite(float(history[0][key]))


def test_sharded_step_equals_single_device(setup, single_run):
  _, _, batch = setup
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  state, step = _make(mesh)
  for i in range(4):
    state, metrics = step(state, sharding.put_batch(batch, mesh), jax.random.key(i))
  np.testing.assert_allclose(float(metrics["loss/total"]), float(single_run[2][-1]["loss/total"]),
                             rtol=1e-4)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single_run[0].params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
