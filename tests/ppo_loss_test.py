"""Tests for rlhf_jax.losses.ppo against independent float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.losses import ppo

B, S = 4, 6
RTOL, ATOL = 2e-5, 2e-6
LENGTHS = (6, 4, 2, 5)


def _mask():
  mask = np.zeros((B, S))
  for b, n in enumerate(LENGTHS):
    mask[b, :n] = 1.0
  return mask


def _data(seed=0):
  """Ratios on both sides of both clip edges and past the dual-clip threshold; adv of both signs."""
  rng = np.random.default_rng(seed)
  old = -rng.uniform(0.5, 3.0, (B, S))
  dlogp = rng.normal(0.0, 0.3, (B, S))
  adv = rng.normal(0.0, 1.0, (B, S))
  # Hand-placed tokens: ratio e^1.2 = 3.3 with adv < 0 (dual clip), e^-0.7 with adv > 0, etc.
  dlogp[0, :5] = [1.2, -0.7, 0.25, -0.15, 0.9]
  adv[0, :5] = [-1.5, 0.8, 1.2, -0.6, -0.4]
  return dict(old=old, logp=old + dlogp, adv=adv, mask=_mask())


def _np_aggregate(loss, mask, mode, fixed_length=None):
  if mode == "token_mean":
    return float(np.sum(loss * mask) / np.sum(mask))
  if mode == "sequence_mean":
    return float(np.mean([np.sum(loss[b] * mask[b]) / np.sum(mask[b]) for b in range(len(mask))]))
  return float(np.sum(loss * mask) / (len(mask) * fixed_length))


def np_surrogate(d, clip_eps, clip_eps_high=None, dual_clip=None, weights=None):
  """Returns the per-token loss (the negated PPO objective)."""
  ratio = np.exp(d["logp"] - d["old"])
  high = clip_eps if clip_eps_high is None else clip_eps_high
  objective = np.minimum(ratio * d["adv"], np.clip(ratio, 1 - clip_eps, 1 + high) * d["adv"])
  if dual_clip is not None:
    objective = np.where(d["adv"] < 0, np.maximum(objective, dual_clip * d["adv"]), objective)
  loss = -objective
  return loss if weights is None else loss * weights


def _jnp(d):
  return {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}


def _surrogate(d, **kw):
  j = _jnp(d)
  return ppo.clipped_surrogate_loss(j["logp"], j["old"], j["adv"], j["mask"], **kw)


SURROGATE_CASES = [
    dict(clip_eps=0.2),
    dict(clip_eps=0.1),
    dict(clip_eps=0.2, clip_eps_high=0.28),
    dict(clip_eps=0.2, dual_clip=3.0),
    dict(clip_eps=0.1, clip_eps_high=0.4, dual_clip=2.0),
]
AGGREGATIONS = [("token_mean", None), ("sequence_mean", None), ("fixed_length", 8)]


def test_test_data_is_informative():
  d = _data()
  m = d["mask"] > 0
  ratio = np.exp(d["logp"] - d["old"])[m]
  adv = d["adv"][m]
  assert np.any((ratio > 1.28) & (adv > 0)) and np.any((ratio < 0.9) & (adv < 0))
  assert np.any((ratio > 1.2) & (ratio < 1.28) & (adv > 0))  # Only clip-higher changes these.
  assert np.any((ratio > 3.0) & (adv < 0)) and np.any((ratio > 2.0) & (ratio < 3.0) & (adv < 0))


@pytest.mark.parametrize("hp", SURROGATE_CASES)
@pytest.mark.parametrize("aggregation,fixed_length", AGGREGATIONS)
def test_surrogate_matches_numpy(hp, aggregation, fixed_length):
  d = _data()
  loss, _ = _surrogate(d, aggregation=aggregation, fixed_length=fixed_length, **hp)
  expected = _np_aggregate(np_surrogate(d, **hp), d["mask"], aggregation, fixed_length)
  np.testing.assert_allclose(loss, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("hp", SURROGATE_CASES)
def test_surrogate_metrics_match_numpy(hp):
  d = _data()
  _, metrics = _surrogate(d, **hp)
  m = d["mask"] > 0
  dlogp = (d["logp"] - d["old"])[m]
  ratio = np.exp(dlogp)
  adv = d["adv"][m]
  high = hp.get("clip_eps_high") or hp["clip_eps"]
  clipped = ((adv > 0) & (ratio > 1 + high)) | ((adv < 0) & (ratio < 1 - hp["clip_eps"]))
  np.testing.assert_allclose(metrics["clipfrac"], clipped.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["approx_kl"], 0.5 * np.mean(dlogp**2), rtol=RTOL)
  np.testing.assert_allclose(metrics["approx_kl_k3"], np.mean(ratio - 1 - dlogp), rtol=RTOL)
  np.testing.assert_allclose(metrics["ratio_mean"], ratio.mean(), rtol=RTOL)
  np.testing.assert_allclose(metrics["ratio_max"], ratio.max(), rtol=RTOL)
  if hp.get("dual_clip"):
    dual = (adv < 0) & (ratio > hp["dual_clip"])
    np.testing.assert_allclose(metrics["dual_clipfrac"], dual.mean(), rtol=1e-6)
  else:
    assert "dual_clipfrac" not in metrics


def test_every_hyperparameter_changes_the_loss():
  d = _data()
  base, _ = _surrogate(d, clip_eps=0.2)
  for kw in [dict(clip_eps=0.1), dict(clip_eps=0.2, clip_eps_high=0.25),
             dict(clip_eps=0.2, dual_clip=3.0)]:
    assert abs(float(_surrogate(d, **kw)[0]) - float(base)) > 1e-4, kw
  dual3, _ = _surrogate(d, clip_eps=0.2, dual_clip=3.0)
  dual2, _ = _surrogate(d, clip_eps=0.2, dual_clip=2.0)
  assert abs(float(dual3) - float(dual2)) > 1e-4


def test_on_policy_identities():
  d = _data()
  d["logp"] = d["old"].copy()
  loss, metrics = _surrogate(d, clip_eps=0.2, dual_clip=3.0)
  m = d["mask"] > 0
  np.testing.assert_allclose(loss, -d["adv"][m].mean(), rtol=RTOL, atol=ATOL)
  for key, value in [("clipfrac", 0.0), ("dual_clipfrac", 0.0), ("approx_kl", 0.0),
                     ("approx_kl_k3", 0.0), ("ratio_mean", 1.0), ("ratio_max", 1.0)]:
    np.testing.assert_allclose(metrics[key], value, atol=1e-7)
  # d loss / d logp = -adv / (number of tokens) on the mask, 0 elsewhere.
  j = _jnp(d)
  grad = jax.grad(lambda lp: ppo.clipped_surrogate_loss(lp, j["old"], j["adv"], j["mask"])[0])(
      j["logp"])
  np.testing.assert_allclose(grad, -d["adv"] * d["mask"] / d["mask"].sum(), rtol=1e-5, atol=1e-8)


def test_padding_with_infinite_logps_is_harmless():
  d = _data()
  clean, clean_metrics = _surrogate(d, dual_clip=3.0)
  dirty = {k: v.copy() for k, v in d.items()}
  pad = d["mask"] == 0
  dirty["logp"][pad] = -np.inf
  dirty["old"][pad] = -np.inf
  dirty["adv"][pad] = 1e30
  j = _jnp(dirty)
  loss_fn = lambda lp: ppo.clipped_surrogate_loss(lp, j["old"], j["adv"], j["mask"],
                                                  dual_clip=3.0)
  (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(j["logp"])
  np.testing.assert_allclose(loss, clean, rtol=1e-6)
  for key in clean_metrics:
    np.testing.assert_allclose(metrics[key], clean_metrics[key], rtol=1e-6)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[pad] == 0.0)


@pytest.mark.parametrize("hp", SURROGATE_CASES)
def test_surrogate_gradient_matches_finite_differences(hp):
  d = _data()
  with jax.enable_x64(True):
    a = {k: jnp.asarray(v, jnp.float64) for k, v in d.items()}
    check_grads(lambda lp: ppo.clipped_surrogate_loss(lp, a["old"], a["adv"], a["mask"], **hp)[0],
                (a["logp"],), order=1, modes=("rev",), eps=1e-6)


def test_tis_weights_truncate_and_stop_gradient():
  rng = np.random.default_rng(3)
  trainer = -rng.uniform(0.5, 2.0, (B, S))
  rollout = trainer + rng.normal(0.0, 0.5, (B, S))
  cap = 1.3
  w = ppo.tis_weights(jnp.asarray(trainer, jnp.float32), jnp.asarray(rollout, jnp.float32), cap)
  expected = np.minimum(np.exp(trainer - rollout), cap)
  assert np.any(expected == cap) and np.any(expected < 1.0)
  np.testing.assert_allclose(w, expected, rtol=1e-6)
  g = jax.grad(lambda t: jnp.sum(ppo.tis_weights(t, jnp.asarray(rollout, jnp.float32), cap)))(
      jnp.asarray(trainer, jnp.float32))
  np.testing.assert_array_equal(g, np.zeros((B, S)))
  np.testing.assert_allclose(ppo.tis_weights(jnp.array([-1.0]), jnp.array([-1.5]), 1.5), [1.5])

  d = _data()
  loss, _ = _surrogate(d, clip_eps=0.2, is_weights_BxS=jnp.asarray(expected, jnp.float32))
  np.testing.assert_allclose(
      loss, _np_aggregate(np_surrogate(d, 0.2, weights=expected), d["mask"], "token_mean"),
      rtol=RTOL, atol=ATOL)
  assert abs(float(loss) - float(_surrogate(d, clip_eps=0.2)[0])) > 1e-4


# ---------------------------------------------------------------- value loss
def _value_data(seed=1):
  rng = np.random.default_rng(seed)
  old_v = rng.normal(0.0, 1.0, (B, S))
  v = old_v + rng.normal(0.0, 0.4, (B, S))
  ret = old_v + rng.normal(0.0, 0.8, (B, S))
  return dict(v=v, old_v=old_v, ret=ret, mask=_mask())


def np_value_loss(d, clip_eps):
  unclipped = (d["v"] - d["ret"]) ** 2
  if clip_eps is None:
    return 0.5 * unclipped, np.zeros_like(unclipped, bool)
  v_clip = np.clip(d["v"], d["old_v"] - clip_eps, d["old_v"] + clip_eps)
  clipped = (v_clip - d["ret"]) ** 2
  return 0.5 * np.maximum(unclipped, clipped), clipped > unclipped


@pytest.mark.parametrize("clip_eps", [None, 0.1, 0.3])
@pytest.mark.parametrize("aggregation,fixed_length", AGGREGATIONS)
def test_value_loss_matches_numpy(clip_eps, aggregation, fixed_length):
  d = _value_data()
  j = _jnp(d)
  loss, metrics = ppo.value_loss(j["v"], j["old_v"], j["ret"], j["mask"], clip_eps=clip_eps,
                                 aggregation=aggregation, fixed_length=fixed_length)
  per_token, clipped = np_value_loss(d, clip_eps)
  np.testing.assert_allclose(loss, _np_aggregate(per_token, d["mask"], aggregation, fixed_length),
                             rtol=RTOL, atol=ATOL)
  m = d["mask"] > 0
  np.testing.assert_allclose(metrics["vf_clipfrac"], clipped[m].mean(), rtol=1e-6)
  explained = 1 - np.var(d["ret"][m] - d["v"][m]) / np.var(d["ret"][m])
  np.testing.assert_allclose(metrics["vf_explained_var"], explained, rtol=1e-5)


def test_value_clipping_matters():
  d = _value_data()
  j = _jnp(d)
  losses = [float(ppo.value_loss(j["v"], j["old_v"], j["ret"], j["mask"], clip_eps=c)[0])
            for c in (None, 0.1, 0.3)]
  assert min(abs(a - b) for a, b in [(losses[0], losses[1]), (losses[1], losses[2])]) > 1e-4
  _, clipped = np_value_loss(d, 0.1)
  assert 0 < clipped[d["mask"] > 0].mean() < 1
  # Docstring example.
  one = lambda x: jnp.array([[x]], jnp.float32)
  np.testing.assert_allclose(ppo.value_loss(one(1.5), one(1.0), one(0.0), one(1.0))[0], 1.125)


@pytest.mark.parametrize("clip_eps", [None, 0.2])
def test_value_loss_gradient(clip_eps):
  d = _value_data()
  with jax.enable_x64(True):
    a = {k: jnp.asarray(v, jnp.float64) for k, v in d.items()}
    check_grads(lambda v: ppo.value_loss(v, a["old_v"], a["ret"], a["mask"], clip_eps=clip_eps)[0],
                (a["v"],), order=1, modes=("rev",), eps=1e-6)


def test_entropy_bonus():
  rng = np.random.default_rng(2)
  ent = rng.uniform(0.0, 3.0, (B, S))
  mask = _mask()
  for aggregation, fixed_length in AGGREGATIONS:
    loss, metrics = ppo.entropy_bonus(jnp.asarray(ent, jnp.float32), jnp.asarray(mask),
                                      aggregation=aggregation, fixed_length=fixed_length)
    np.testing.assert_allclose(loss, -_np_aggregate(ent, mask, aggregation, fixed_length),
                               rtol=RTOL)
    np.testing.assert_allclose(metrics["entropy"], ent[mask > 0].mean(), rtol=RTOL)


def test_jit():
  d = _jnp(_data())
  fn = jax.jit(lambda lp, old, adv, m: ppo.clipped_surrogate_loss(
      lp, old, adv, m, clip_eps_high=0.3, dual_clip=3.0, aggregation="sequence_mean"))
  np.testing.assert_allclose(
      fn(d["logp"], d["old"], d["adv"], d["mask"])[0],
      ppo.clipped_surrogate_loss(d["logp"], d["old"], d["adv"], d["mask"], clip_eps_high=0.3,
                                 dual_clip=3.0, aggregation="sequence_mean")[0], rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
  x = jnp.zeros((B, S))
  with pytest.raises(ValueError, match="adv_BxS"):
    ppo.clipped_surrogate_loss(x, x, jnp.zeros((B, S + 1)), x)
  with pytest.raises(ValueError, match="mask_BxS"):
    ppo.clipped_surrogate_loss(x, x, x, jnp.zeros(S))
  with pytest.raises(ValueError, match="dual_clip"):
    ppo.clipped_surrogate_loss(x, x, x, x, dual_clip=0.5)
  with pytest.raises(ValueError, match="clip_eps"):
    ppo.clipped_surrogate_loss(x, x, x, x, clip_eps=1.5)
  with pytest.raises(ValueError, match="fixed_length"):
    ppo.clipped_surrogate_loss(x, x, x, x, aggregation="fixed_length")
  with pytest.raises(ValueError, match="returns_BxS"):
    ppo.value_loss(x, x, jnp.zeros((B, 2)), x)
  with pytest.raises(ValueError, match="rollout_logp_BxS"):
    ppo.tis_weights(x, jnp.zeros((B, 2)), 2.0)
