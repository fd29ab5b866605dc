"""DPO step: loss and update against independent float64 NumPy / plain-JAX references.

Policy != reference throughout (different init seeds), so a beta applied twice, a wrong sign or a
swapped chosen/rejected half changes the numbers these tests compare.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import models, sharding
from rlhf_jax.algorithms import dpo, reference_logprobs, train_state
from rlhf_jax.data import batching

CFG = models.get_model_config("test")
NUM_PAIRS = 4
WEIGHTS = np.array([1.0, 0.5, 2.0, 0.0], np.float32)  # the last pair is dropped by its weight
LR = 1.0  # SGD: new params = params - grad exactly, so the update IS the gradient


@pytest.fixture(scope="module")
def setup():
  lm = models.CausalLM(CFG)
  init = jax.jit(lambda key: nn.unbox(models.init_params(lm, key)))
  params, ref_params = init(jax.random.key(0)), init(jax.random.key(1))
  rng = np.random.default_rng(0)
  draw = lambda lo, hi: [rng.integers(4, CFG.vocab_size, size=rng.integers(lo, hi)).tolist()  # noqa: E731
                         for _ in range(NUM_PAIRS)]
  prompts, chosen, rejected = draw(2, 7), draw(1, 7), draw(1, 7)
  rows = batching.pad_preference_pairs(prompts, chosen, rejected, buckets=(16,), pad_id=0)
  pairs = batching.PreferenceBatch(rows, WEIGHTS, np.ones(NUM_PAIRS, np.float32),
                                   np.zeros(NUM_PAIRS, bool), np.zeros(NUM_PAIRS, np.float32))
  batch = {k: jnp.asarray(v) for k, v in dpo.host_batch(pairs).items()}
  state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 opt_state=optax.sgd(LR).init(params))
  logits_fn = jax.jit(lambda p, b: lm.apply({"params": p}, b["tokens_2BxL"], b["positions_2BxL"],
                                            b["segment_ids_2BxL"]).logits)
  return {"lm": lm, "params": params, "ref_params": ref_params, "batch": batch, "state": state,
          "logp_fn": dpo.make_lm_logp_fn(lm), "logits_fn": logits_fn}


@pytest.fixture(scope="module")
def dpo_jit(setup):
  """One compiled DPO step with beta as a traced argument (one compile serves every beta)."""
  def step(state, batch, ref_params, beta):
    return dpo.dpo_step(state, batch, jax.random.key(0), ref_params, logp_fn=setup["logp_fn"],
                        loss_name="dpo", loss_hparams={"beta": beta}, tx=optax.sgd(LR))
  return jax.jit(step)


def _np_summed_logprobs(params, setup, batch):
  """Float64 NumPy: sum over response tokens of log softmax(logits at t - 1)[token t]."""
  logits = np.asarray(setup["logits_fn"](params, batch), np.float64)
  tokens, mask = np.asarray(batch["tokens_2BxL"]), np.asarray(batch["loss_mask_2BxL"])
  logp = np.zeros(tokens.shape[0])
  lengths = np.zeros(tokens.shape[0])
  for r in range(tokens.shape[0]):
    for t in range(1, tokens.shape[1]):
      if mask[r, t]:
        z = logits[r, t - 1]
        logp[r] += z[tokens[r, t]] - (z.max() + np.log(np.sum(np.exp(z - z.max()))))
        lengths[r] += 1
  return logp[:NUM_PAIRS], logp[NUM_PAIRS:], lengths[:NUM_PAIRS], lengths[NUM_PAIRS:]


def _np_weighted_mean(x, w=WEIGHTS.astype(np.float64)):
  return np.sum(w * x) / np.sum(w)


def _independent_dpo_loss(params, ref_params, lm, batch, beta):
  """Plain-JAX DPO loss written without rlhf_jax.ops / rlhf_jax.losses (for the gradient check)."""
  def summed(p):
    logits = lm.apply({"params": p}, batch["tokens_2BxL"], batch["positions_2BxL"],
                      batch["segment_ids_2BxL"]).logits[:, :-1]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), batch["tokens_2BxL"][:, 1:, None],
                               -1)[..., 0]
    return jnp.sum(logp * batch["loss_mask_2BxL"][:, 1:], axis=1)
  pol, ref = summed(params), jax.lax.stop_gradient(summed(ref_params))
  h = (pol[:NUM_PAIRS] - ref[:NUM_PAIRS]) - (pol[NUM_PAIRS:] - ref[NUM_PAIRS:])
  w = batch["weight_B"]
  return jnp.sum(w * -jax.nn.log_sigmoid(beta * h)) / jnp.sum(w)


def test_summed_logprobs_equal_numpy_and_chunked_path(setup):
  lm, params, batch = setup["lm"], setup["params"], setup["batch"]
  want = _np_summed_logprobs(params, setup, batch)
  full = jax.jit(setup["logp_fn"])(params, batch)
  chunked = jax.jit(dpo.make_lm_logp_fn(lm, chunked=True, chunk_size=100))(params, batch)
  for got in (full, chunked):  # 512 = 5 chunks of 100 + a partial one
    for g, w in zip(got, want):
      np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=2e-5)
  assert want[2].min() >= 1 and not np.array_equal(want[2], want[3])  # lengths differ across rows


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_step_loss_and_rewards_equal_numpy_with_policy_not_reference(setup, dpo_jit, beta):
  _, metrics = dpo_jit(setup["state"], setup["batch"], setup["ref_params"], beta)
  pc, pr, _, _ = _np_summed_logprobs(setup["params"], setup, setup["batch"])
  rc, rr, _, _ = _np_summed_logprobs(setup["ref_params"], setup, setup["batch"])
  h = (pc - rc) - (pr - rr)
  assert np.abs(h[:3]).min() > 0.05  # policy != reference on every weighted pair
  np.testing.assert_allclose(metrics["loss/total"], _np_weighted_mean(np.logaddexp(0, -beta * h)),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["rewards/chosen"], _np_weighted_mean(beta * (pc - rc)),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics["rewards/margin"], _np_weighted_mean(beta * h), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(metrics["rewards/accuracy"], _np_weighted_mean((h > 0) * 1.0))
  np.testing.assert_allclose(metrics["logps/ref_rejected"], _np_weighted_mean(rr), rtol=1e-5)
  assert float(metrics["batch/loss_denominator"]) == pytest.approx(WEIGHTS.sum())


def test_step_update_equals_gradient_of_an_independent_loss(setup, dpo_jit):
  beta = 0.5
  new_state, metrics = dpo_jit(setup["state"], setup["batch"], setup["ref_params"], beta)
  loss_and_grad = jax.jit(jax.value_and_grad(
      functools.partial(_independent_dpo_loss, lm=setup["lm"], beta=beta)))
  loss, grads = loss_and_grad(setup["params"], setup["ref_params"], batch=setup["batch"])
  np.testing.assert_allclose(metrics["loss/total"], loss, rtol=1e-6)
  step_grads = jax.tree.map(lambda old, new: (old - new) / LR, setup["params"], new_state.params)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-4), step_grads,
               grads)
  np.testing.assert_allclose(metrics["optim/grad_norm"], optax.tree.norm(grads), rtol=1e-5)
  assert int(new_state.step) == 1


def test_precomputed_reference_gives_the_same_step(setup, dpo_jit):
  ref_fn = reference_logprobs.make_reference_fn(setup["logp_fn"])
  chosen_B, rejected_B = ref_fn(setup["ref_params"], setup["batch"])
  precomputed = {**setup["batch"], "ref_chosen_logp_B": chosen_B, "ref_rejected_logp_B": rejected_B}
  a_state, a_metrics = dpo_jit(setup["state"], setup["batch"], setup["ref_params"], 0.3)
  b_state, b_metrics = dpo_jit(setup["state"], precomputed, None, 0.3)
  for k in a_metrics:
    np.testing.assert_allclose(a_metrics[k], b_metrics[k], rtol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), a_state.params,
               b_state.params)


def test_reference_free_loss_skips_the_reference_pass_and_uses_lengths(setup):
  batch = setup["batch"]
  kw = dict(logp_fn=setup["logp_fn"], loss_name="simpo", loss_hparams={"beta": 2.0, "gamma": 0.3},
            tx=optax.sgd(LR))
  step = functools.partial(dpo.dpo_step, **kw)
  key = jax.random.key(0)
  with_ref = str(jax.make_jaxpr(step)(setup["state"], batch, key, setup["ref_params"]))
  without = str(jax.make_jaxpr(step)(setup["state"], batch, key, None))
  dpo_jaxpr = str(jax.make_jaxpr(functools.partial(
      dpo.dpo_step, **{**kw, "loss_name": "dpo", "loss_hparams": {"beta": 0.1}}))(
          setup["state"], batch, key, setup["ref_params"]))
  assert with_ref.count("dot_general") == without.count("dot_general")
  assert dpo_jaxpr.count("dot_general") > without.count("dot_general")  # + the reference forward

  _, metrics = jax.jit(step)(setup["state"], batch, key, None)
  pc, pr, lc, lr = _np_summed_logprobs(setup["params"], setup, batch)
  z = 2.0 * (pc / lc - pr / lr) - 0.3
  np.testing.assert_allclose(metrics["loss/total"], _np_weighted_mean(np.logaddexp(0, -z)),
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["lengths/chosen"], _np_weighted_mean(lc), rtol=1e-6)


def test_micro_batches_equal_one_batch(setup, dpo_jit):
  def step(state, batch, ref_params):
    return dpo.dpo_step(state, batch, jax.random.key(0), ref_params, logp_fn=setup["logp_fn"],
                        loss_name="dpo", loss_hparams={"beta": 0.5}, tx=optax.sgd(LR),
                        num_micro_batches=2)
  a_state, a_metrics = jax.jit(step)(setup["state"], setup["batch"], setup["ref_params"])
  b_state, b_metrics = dpo_jit(setup["state"], setup["batch"], setup["ref_params"], 0.5)
  for k in ("loss/total", "rewards/margin", "rewards/accuracy", "logps/ref_chosen"):
    np.testing.assert_allclose(a_metrics[k], b_metrics[k], rtol=1e-5, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), a_state.params,
               b_state.params)


def test_sharded_step_equals_single_device_and_compiles_once(setup, dpo_jit):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  lm = models.CausalLM(CFG, mesh=mesh, rules=sharding.DEFAULT_RULES)
  init = lambda key: models.init_params(lm, key)  # noqa: E731
  tx = optax.sgd(LR)
  state, state_sh = train_state.create_train_state(init, tx, mesh, sharding.DEFAULT_RULES,
                                                   jax.random.key(0))
  ref_params, ref_sh = sharding.init_sharded(init, mesh, sharding.DEFAULT_RULES, jax.random.key(1))
  step = dpo.make_dpo_step(dpo.make_lm_logp_fn(lm), "dpo", {"beta": 0.5}, tx)
  host = jax.device_get(setup["batch"])
  jitted = dpo.jit_dpo_step(step, state_sh, train_state.batch_shardings_for(host, mesh), mesh,
                            ref_sh)
  for i in range(2):
    state, metrics = jitted(state, sharding.put_batch(host, mesh), jax.random.key(i), ref_params)
  assert jitted._cache_size() == 1  # pylint: disable=protected-access
  assert ref_params["lm_head"]["kernel"].is_deleted() is False  # never donated

  single = setup["state"]
  for _ in range(2):  # the same computation (SGD, beta 0.5) on one device
    single, single_metrics = dpo_jit(single, setup["batch"], setup["ref_params"], 0.5)
  np.testing.assert_allclose(metrics["loss/total"], single_metrics["loss/total"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), jax.device_get(state.params),
               single.params)


def test_reference_errors_are_clear(setup):
  kw = dict(logp_fn=setup["logp_fn"], loss_name="dpo", loss_hparams={"beta": 0.1},
            tx=optax.sgd(LR))
  step = functools.partial(dpo.dpo_step, **kw)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="needs reference log-probs: pass ref_params"):
    jax.eval_shape(step, setup["state"], setup["batch"], key, None)
  both = {**setup["batch"], "ref_chosen_logp_B": jnp.zeros(NUM_PAIRS),
          "ref_rejected_logp_B": jnp.zeros(NUM_PAIRS)}
  with pytest.raises(ValueError, match="pass exactly one"):
    jax.eval_shape(step, setup["state"], both, key, setup["ref_params"])
  half = {**setup["batch"], "ref_chosen_logp_B": jnp.zeros(NUM_PAIRS)}
  with pytest.raises(ValueError, match="only some of the precomputed"):
    jax.eval_shape(step, setup["state"], half, key, None)
  with pytest.raises(ValueError, match="unknown preference loss 'dop'"):
    dpo.make_dpo_step(setup["logp_fn"], "dop", {}, optax.sgd(LR))


def test_host_batch_drops_ties_and_collate_looks_up_reference():
  examples = [{"id": f"e{i}", "prompt_ids": [2, 5 + i], "chosen_ids": [7, 3], "rejected_ids": [8, 3],
               "tie": i == 1, "weight": 2.0} for i in range(3)]
  ref = reference_logprobs.ReferenceLogProbs(["e0", "e1", "e2"], [-1.0, -2.0, -3.0],
                                             [-4.0, -5.0, -6.0], dataset_id="d", reference_id="r")
  batch = dpo.collate_dpo(list(reversed(examples)), buckets=(8,), pad_id=0, reference=ref)
  np.testing.assert_array_equal(batch["weight_B"], [2.0, 0.0, 2.0])
  np.testing.assert_array_equal(batch["ref_chosen_logp_B"], [-3.0, -2.0, -1.0])
  np.testing.assert_array_equal(batch["ref_rejected_logp_B"], [-6.0, -5.0, -4.0])
  assert batch["tokens_2BxL"].shape == (6, 8)
  np.testing.assert_array_equal(batch["tokens_2BxL"][0, :4], [2, 7, 7, 3])  # chosen of "e2"
  np.testing.assert_array_equal(batch["tokens_2BxL"][3, :4], [2, 7, 8, 3])  # rejected of "e2"
  with pytest.raises(KeyError, match="'e9' has no precomputed reference"):
    dpo.collate_dpo([{**examples[0], "id": "e9"}], buckets=(8,), pad_id=0, reference=ref)
