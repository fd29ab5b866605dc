"""Tests for rlhf_jax.algorithms.optimizer against float64 NumPy references."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import optimizer

# ----------------------------------------------------------------------------- schedule


def _np_schedule(step, lr, warmup, decay, total, end_ratio):
  end = lr * end_ratio
  if step < warmup:
    return lr * step / warmup
  p = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
  if decay == "cosine":
    return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * p))
  if decay == "linear":
    return lr + (end - lr) * p
  return lr


@pytest.mark.parametrize("decay", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("lr,warmup,total,end_ratio", [(1e-3, 10, 50, 0.1), (3e-4, 0, 20, 0.0),
                                                       (2.0, 5, 7, 0.5)])
def test_schedule_matches_reference(decay, lr, warmup, total, end_ratio):
  schedule = optimizer.make_schedule(lr, warmup, decay, total, end_ratio)
  steps = np.arange(0, total + 5)
  got = np.asarray(jax.vmap(schedule)(jnp.asarray(steps)))
  want = np.array([_np_schedule(int(s), lr, warmup, decay, total, end_ratio) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * lr)  # float32 steps
  if warmup:
    assert got[0] == 0.0 and got[warmup] == pytest.approx(lr)
  if decay != "constant":
    assert got[-1] == pytest.approx(lr * end_ratio, abs=1e-7 * lr)


# ----------------------------------------------------------------------------- decay mask


def test_decay_mask_excludes_1d_norms_and_biases_by_path_and_ndim():
  params = {
      "embed": {"embedding": jnp.zeros((5, 4))},
      "layers": {  # scanned layers: a leading layer axis makes norm scales and biases 2-D
          "attn_norm": {"scale": jnp.zeros((2, 4))},
          "mlp": {"kernel": jnp.zeros((2, 4, 8)), "bias": jnp.zeros((2, 8))},
      },
      "head": {"kernel": jnp.zeros((4, 1)), "b": jnp.zeros((1,))},
      "tokens": [jnp.zeros((3, 3)), jnp.zeros((3,))],
  }
  mask = optimizer.decay_mask(params)
  assert mask == {
      "embed": {"embedding": True},
      "layers": {"attn_norm": {"scale": False}, "mlp": {"kernel": True, "bias": False}},
      "head": {"kernel": True, "b": False},
      "tokens": [True, False],
  }
  custom = optimizer.decay_mask(params, no_decay_patterns=("^embed",))
  assert custom["embed"]["embedding"] is False and custom["layers"]["mlp"]["bias"] is True


# ----------------------------------------------------------------------------- AdamW


def _np_adamw_steps(params, grads_seq, cfg):
  """Float64 reference: global-norm clipping -> Adam (bias-corrected) -> masked decoupled decay."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  nu = {k: np.zeros_like(v) for k, v in params.items()}
  decayed = {k: v.ndim >= 2 and "bias" not in k for k, v in params.items()}
  for t, grads in enumerate(grads_seq):
    grads = {k: g.astype(np.float64) for k, g in grads.items()}
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    if cfg.grad_clip_norm > 0 and norm > cfg.grad_clip_norm:
      grads = {k: g * cfg.grad_clip_norm / norm for k, g in grads.items()}
    lr = _np_schedule(t, cfg.lr, cfg.warmup_steps, cfg.decay, cfg.total_steps, cfg.end_lr_ratio)
    for k in params:
      mu[k] = cfg.b1 * mu[k] + (1 - cfg.b1) * grads[k]
      nu[k] = cfg.b2 * nu[k] + (1 - cfg.b2) * grads[k] ** 2
      mu_hat = mu[k] / (1 - cfg.b1 ** (t + 1))
      nu_hat = nu[k] / (1 - cfg.b2 ** (t + 1))
      update = mu_hat / (np.sqrt(nu_hat) + cfg.eps)
      if decayed[k]:
        update = update + cfg.weight_decay * params[k]
      params[k] = params[k] - lr * update
  return params


@pytest.mark.parametrize("clip,weight_decay,decay", [(1.0, 0.1, "cosine"), (0.0, 0.5, "linear"),
                                                     (100.0, 0.0, "constant")])
def test_make_optimizer_matches_numpy_adamw(clip, weight_decay, decay):
  cfg = optimizer.optimizer_config_defaults()
  cfg.lr, cfg.warmup_steps, cfg.total_steps, cfg.end_lr_ratio = 0.05, 2, 6, 0.2
  cfg.b1, cfg.b2, cfg.eps = 0.8, 0.9, 1e-6
  cfg.grad_clip_norm, cfg.weight_decay, cfg.decay = clip, weight_decay, decay
  tx, schedule = optimizer.make_optimizer(cfg)
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32)}
  grads_seq = [{k: (3.0 * rng.normal(size=v.shape)).astype(np.float32) for k, v in params.items()}
               for _ in range(5)]
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)
  update = jax.jit(tx.update)
  for grads in grads_seq:
    updates, state = update(jax.tree.map(jnp.asarray, grads), state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)
  want = _np_adamw_steps(params, grads_seq, cfg)
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=2e-5, atol=2e-6)
  assert float(schedule(3)) == pytest.approx(_np_schedule(3, 0.05, 2, decay, 6, 0.2), rel=1e-6)
  # Every hyperparameter matters here: the decayed kernel moved differently from a no-decay run.
  if weight_decay:
    cfg_nd = cfg.copy_and_resolve_references()
    cfg_nd.weight_decay = 0.0
    assert not np.allclose(_np_adamw_steps(params, grads_seq, cfg_nd)["kernel"], want["kernel"])


@pytest.mark.parametrize("field,value,message", [
    ("decay", "step", "optimizer.decay"),
    ("lr", -1.0, "optimizer.lr"),
    ("total_steps", 5, "optimizer.total_steps"),
    ("end_lr_ratio", 1.5, "optimizer.end_lr_ratio"),
    ("b2", 1.0, "optimizer.b2"),
    ("compute_dtype", "int8", "optimizer.compute_dtype"),
])
def test_invalid_config_names_the_field(field, value, message):
  cfg = optimizer.optimizer_config_defaults()
  cfg.warmup_steps, cfg.total_steps = 10, 100
  cfg[field] = value
  with pytest.raises(ValueError, match=message):
    optimizer.make_optimizer(cfg)


# ----------------------------------------------------------------------------- accumulation

B, S, D, V = 8, 5, 3, 4


def _token_batch(seed=0):
  rng = np.random.default_rng(seed)
  lengths = np.array([1, 5, 2, 4, 3, 5, 1, 2])  # ragged: micro-batches hold unequal token counts
  return {
      "x_BxSxD": rng.normal(size=(B, S, D)).astype(np.float32),
      "y_BxS": rng.integers(0, V, size=(B, S)).astype(np.int32),
      "mask_BxS": (np.arange(S)[None, :] < lengths[:, None]).astype(np.float32),
  }


def _linear_token_loss(params, batch):
  """Token-mean cross-entropy of a linear softmax model, in the (sum, (count, metrics)) protocol."""
  logits_BxSxV = jnp.einsum("bsd,dv->bsv", batch["x_BxSxD"], params["w_DxV"]) + params["b_V"][None, None, :]
  logp_BxSxV = jax.nn.log_softmax(logits_BxSxV.astype(jnp.float32), axis=-1)
  nll_BxS = -jnp.take_along_axis(logp_BxSxV, batch["y_BxS"][..., None], axis=-1)[..., 0]
  mask_BxS = batch["mask_BxS"]
  total = jnp.sum(nll_BxS * mask_BxS)
  count = jnp.sum(mask_BxS)
  return total, (count, {"loss/nll": total / count, "tokens/first_logit": jnp.sum(
      logits_BxSxV[..., 0] * mask_BxS) / count})


def _np_reference(params, batch):
  """Float64 loss and analytic gradient of the full-batch token-mean cross-entropy."""
  w, b = params["w_DxV"].astype(np.float64), params["b_V"].astype(np.float64)
  x, y, m = (batch["x_BxSxD"].astype(np.float64), batch["y_BxS"],
             batch["mask_BxS"].astype(np.float64))
  logits = np.einsum("bsd,dv->bsv", x, w) + b
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  onehot = np.eye(V)[y]
  count = m.sum()
  loss = -(np.log((p * onehot).sum(-1)) * m).sum() / count
  dlogits = (p - onehot) * m[..., None] / count
  return loss, {"w_DxV": np.einsum("bsd,bsv->dv", x, dlogits), "b_V": dlogits.sum((0, 1))}


def _acc(loss_fn, params, batch, num_micro_batches, **kwargs):
  """accumulated_value_and_grad, jitted (eager dispatch of the many small ops is slower)."""
  return jax.jit(functools.partial(optimizer.accumulated_value_and_grad, loss_fn,
                                   num_micro_batches=num_micro_batches, **kwargs))(params, batch)


@pytest.fixture
def linear_params():
  rng = np.random.default_rng(1)
  return {"w_DxV": jnp.asarray(rng.normal(size=(D, V)), jnp.float32),
          "b_V": jnp.asarray(rng.normal(size=(V,)), jnp.float32)}


@pytest.mark.parametrize("num_micro_batches", [1, 2, 4, 8])
def test_accumulation_equals_full_batch_for_ragged_token_mean(linear_params, num_micro_batches):
  batch = jax.tree.map(jnp.asarray, _token_batch())
  (loss, metrics), grads = _acc(_linear_token_loss, linear_params, batch, num_micro_batches)
  (full_sum, (full_count, full_metrics)), full_grads = jax.value_and_grad(
      lambda p: _linear_token_loss(p, batch), has_aux=True)(linear_params)
  np.testing.assert_allclose(loss, full_sum / full_count, rtol=1e-6)
  for k in grads:
    np.testing.assert_allclose(grads[k], full_grads[k] / full_count, rtol=1e-6, atol=1e-6)
  for k in full_metrics:
    np.testing.assert_allclose(metrics[k], full_metrics[k], rtol=1e-6)
  assert float(metrics["batch/loss_denominator"]) == float(full_count) == 23.0
  # Independent float64 reference.
  ref_loss, ref_grads = _np_reference(jax.device_get(linear_params), _token_batch())
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for k in grads:
    np.testing.assert_allclose(grads[k], ref_grads[k], rtol=1e-5, atol=1e-6)
    assert grads[k].dtype == jnp.float32


def test_naive_mean_of_micro_batch_means_differs_for_ragged_masks(linear_params):
  """Guards the protocol: averaging per-micro-batch means (denominator 1) is NOT the token mean."""
  batch = jax.tree.map(jnp.asarray, _token_batch())
  naive = optimizer.mean_loss(lambda p, b: (lambda s, c: (s / c[0], c[1]))(
      *_linear_token_loss(p, b)))
  (loss_naive, _), _ = _acc(naive, linear_params, batch, 4)
  (loss, _), _ = _acc(_linear_token_loss, linear_params, batch, 4)
  assert abs(float(loss_naive) - float(loss)) > 1e-3


def test_mean_loss_adapter_is_exact_for_per_example_means(linear_params):
  batch = jax.tree.map(jnp.asarray, _token_batch())

  def per_example_mean(p, b):
    s, (_, metrics) = _linear_token_loss(p, {**b, "mask_BxS": jnp.ones_like(b["mask_BxS"])})
    return s / b["mask_BxS"].size, {"loss/nll": metrics["loss/nll"]}

  (loss, metrics), grads = _acc(optimizer.mean_loss(per_example_mean), linear_params, batch, 4)
  full_loss, full_grads = jax.value_and_grad(lambda p: per_example_mean(p, batch)[0])(linear_params)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss/nll"], full_loss, rtol=1e-6)
  for k in grads:
    np.testing.assert_allclose(grads[k], full_grads[k], rtol=1e-6, atol=1e-7)


def test_accumulation_gradient_matches_finite_differences(linear_params):
  batch = jax.tree.map(jnp.asarray, _token_batch())
  grads = _acc(_linear_token_loss, linear_params, batch, 2)[1]
  base = jax.device_get(linear_params)
  b64 = _token_batch()
  eps = 1e-4
  for index in [(0, 0), (2, 3), (1, 2)]:
    plus = {k: v.astype(np.float64).copy() for k, v in base.items()}
    minus = {k: v.astype(np.float64).copy() for k, v in base.items()}
    plus["w_DxV"][index] += eps
    minus["w_DxV"][index] -= eps
    fd = (_np_reference(plus, b64)[0] - _np_reference(minus, b64)[0]) / (2 * eps)
    assert float(grads["w_DxV"][index]) == pytest.approx(fd, rel=1e-4, abs=1e-6)


def test_micro_batch_keys_are_distinct_and_deterministic(linear_params):
  batch = jax.tree.map(jnp.asarray, _token_batch())

  def noisy_loss(p, b, key):
    s, (c, m) = _linear_token_loss(p, b)
    return s * (1.0 + jax.random.uniform(key)), (c, m)

  key = jax.random.key(3)
  (l1, _), _ = _acc(noisy_loss, linear_params, batch, 2, key=key)
  (l2, _), _ = _acc(noisy_loss, linear_params, batch, 2, key=key)
  assert float(l1) == float(l2)
  parts = optimizer.split_micro_batches(batch, 2)
  want = 0.0
  for j in range(2):
    micro = jax.tree.map(lambda x: x[j], parts)  # pylint: disable=cell-var-from-loop
    s, (c, _) = _linear_token_loss(linear_params, micro)
    want += float(s) * (1.0 + float(jax.random.uniform(jax.random.fold_in(key, j))))
  assert float(l1) == pytest.approx(want / 23.0, rel=1e-6)


def test_split_micro_batches_is_strided_and_checks_divisibility():
  x = jnp.arange(12).reshape(6, 2)
  parts = optimizer.split_micro_batches({"x": x}, 3)["x"]
  assert parts.shape == (3, 2, 2)
  np.testing.assert_array_equal(parts[1], x[1::3])
  with pytest.raises(ValueError, match="not divisible by num_micro_batches=4"):
    optimizer.split_micro_batches({"x": x}, 4)
  with pytest.raises(ValueError, match="num_micro_batches must be >= 1"):
    optimizer.accumulated_value_and_grad(_linear_token_loss, {}, {"x": x}, 0)


# ----------------------------------------------------------------------------- mixed precision


def test_cast_params_casts_only_floats():
  tree = {"w": jnp.ones((2, 2), jnp.float32), "ids": jnp.arange(3, dtype=jnp.int32)}
  cast = optimizer.cast_params(tree, "bfloat16")
  assert cast["w"].dtype == jnp.bfloat16 and cast["ids"].dtype == jnp.int32
  with pytest.raises(ValueError, match="compute dtype"):
    optimizer.cast_params(tree, "float64x")


def test_bfloat16_compute_gives_float32_gradients_close_to_float32(linear_params):
  batch = jax.tree.map(jnp.asarray, _token_batch())
  (loss16, _), grads16 = _acc(_linear_token_loss, linear_params, batch, 2,
                              compute_dtype=jnp.bfloat16)
  (loss32, _), grads32 = _acc(_linear_token_loss, linear_params, batch, 2)
  assert loss16.dtype == jnp.float32
  for k in grads16:
    assert grads16[k].dtype == jnp.float32
    np.testing.assert_allclose(grads16[k], grads32[k], rtol=0.05, atol=0.02)
  assert float(loss16) != float(loss32)  # the forward pass really ran in bfloat16
