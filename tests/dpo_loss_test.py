"""Tests for rlhf_jax.losses.dpo against independent float64 NumPy references."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.losses import dpo

B = 6
RTOL, ATOL = 2e-5, 2e-6


def _data(seed=0):
  """Summed log-probs with policy != reference, h of both signs, positive weights, lengths."""
  rng = np.random.default_rng(seed)
  ref_c = -rng.uniform(8.0, 16.0, B)
  ref_r = -rng.uniform(8.0, 16.0, B)
  # Fixed policy shifts: h = [3, 1.5, 0.3, -1.1, -2.5, 4.5] has both signs and crosses 1 / beta.
  pol_c = ref_c + np.array([2.0, 1.0, 0.5, -0.5, -1.0, 3.0])
  pol_r = ref_r + np.array([-1.0, -0.5, 0.2, 0.6, 1.5, -1.5])
  len_c = rng.integers(4, 20, B).astype(np.float64)
  len_r = rng.integers(4, 20, B).astype(np.float64)
  w = rng.uniform(0.2, 2.0, B)
  return dict(pc=pol_c, pr=pol_r, rc=ref_c, rr=ref_r, lc=len_c, lr=len_r, w=w)


# ---------------------------------------------------------------- independent NumPy references
def _np_sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _np_wmean(x, w):
  return float(np.sum(w * x) / np.sum(w))


def _np_h(d):
  return (d["pc"] - d["rc"]) - (d["pr"] - d["rr"])


def np_dpo(d, beta):
  return _np_wmean(-np.log(_np_sigmoid(beta * _np_h(d))), d["w"])


def np_cdpo(d, beta, label_smoothing):
  z = beta * _np_h(d)
  e = label_smoothing
  return _np_wmean(-(1 - e) * np.log(_np_sigmoid(z)) - e * np.log(_np_sigmoid(-z)), d["w"])


def np_robust(d, beta, label_noise):
  z = beta * _np_h(d)
  e = label_noise
  loss = (-(1 - e) * np.log(_np_sigmoid(z)) + e * np.log(_np_sigmoid(-z))) / (1 - 2 * e)
  return _np_wmean(loss, d["w"])


def np_ipo(d, beta):
  return _np_wmean((_np_h(d) - 1.0 / (2.0 * beta)) ** 2, d["w"])


def np_hinge(d, beta):
  return _np_wmean(np.maximum(0.0, 1.0 - beta * _np_h(d)), d["w"])


def np_simpo(d, beta, gamma):
  z = beta * d["pc"] / d["lc"] - beta * d["pr"] / d["lr"] - gamma
  return _np_wmean(-np.log(_np_sigmoid(z)), d["w"])


def np_orpo(d, lam):
  a_c, a_r = d["pc"] / d["lc"], d["pr"] / d["lr"]
  p_c, p_r = np.exp(a_c), np.exp(a_r)
  log_or = np.log((p_c / (1 - p_c)) / (p_r / (1 - p_r)))
  return _np_wmean(-a_c - lam * np.log(_np_sigmoid(log_or)), d["w"])


def np_rewards(d, name, hp):
  if name == "simpo":
    return hp["beta"] * d["pc"] / d["lc"], hp["beta"] * d["pr"] / d["lr"]
  if name == "orpo":
    return hp["lam"] * d["pc"] / d["lc"], hp["lam"] * d["pr"] / d["lr"]
  return hp["beta"] * (d["pc"] - d["rc"]), hp["beta"] * (d["pr"] - d["rr"])


NP_REFS = {"dpo": np_dpo, "cdpo": np_cdpo, "robust_dpo": np_robust, "ipo": np_ipo,
           "hinge": np_hinge, "simpo": np_simpo, "orpo": np_orpo}

CASES = [
    ("dpo", dict(beta=0.05)), ("dpo", dict(beta=0.3)), ("dpo", dict(beta=1.5)),
    ("cdpo", dict(beta=0.1, label_smoothing=0.1)), ("cdpo", dict(beta=0.7, label_smoothing=0.3)),
    ("robust_dpo", dict(beta=0.1, label_noise=0.1)),
    ("robust_dpo", dict(beta=0.7, label_noise=0.3)),
    ("ipo", dict(beta=0.05)), ("ipo", dict(beta=0.5)),
    ("hinge", dict(beta=0.2)), ("hinge", dict(beta=0.9)),
    ("simpo", dict(beta=2.0, gamma=0.5)), ("simpo", dict(beta=0.7, gamma=1.4)),
    ("orpo", dict(lam=0.1)), ("orpo", dict(lam=2.0)),
]


def _call(name, d, weights=True, **hp):
  fn = dpo.get_preference_loss(name)
  f32 = lambda k: jnp.asarray(d[k], jnp.float32)
  return fn(f32("pc"), f32("pr"), f32("rc"), f32("rr"),
            weights_B=f32("w") if weights else None, chosen_len_B=f32("lc"),
            rejected_len_B=f32("lr"), **hp)


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("name,hp", CASES)
def test_loss_and_metrics_match_numpy(name, hp):
  d = _data()
  loss, metrics = _call(name, d, **hp)
  np.testing.assert_allclose(loss, NP_REFS[name](d, **hp), rtol=RTOL, atol=ATOL)
  r_c, r_r = np_rewards(d, name, hp)
  w = d["w"]
  np.testing.assert_allclose(metrics["rewards/chosen"], _np_wmean(r_c, w), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(metrics["rewards/rejected"], _np_wmean(r_r, w), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(metrics["rewards/margin"], _np_wmean(r_c - r_r, w),
                             rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(metrics["rewards/accuracy"], _np_wmean((r_c > r_r) * 1.0, w),
                             rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(metrics["logps/chosen"], _np_wmean(d["pc"], w), rtol=RTOL)
  np.testing.assert_allclose(metrics["logps/rejected"], _np_wmean(d["pr"], w), rtol=RTOL)


def test_test_data_is_informative():
  """The accuracy metric and hinge/sign-dependent terms need pairs on both sides."""
  h = _np_h(_data())
  assert np.any(h > 0) and np.any(h < 0)
  assert np.any(0.9 * h > 1) and np.any(0.9 * h < 1)  # hinge active and inactive at beta=0.9.


@pytest.mark.parametrize("name,hp", CASES)
def test_every_hyperparameter_changes_the_loss(name, hp):
  d = _data()
  base, _ = _call(name, d, **hp)
  for key, value in hp.items():
    changed, _ = _call(name, d, **{**hp, key: value * 1.5})
    assert abs(float(changed) - float(base)) > 1e-4, (name, key)


@pytest.mark.parametrize("beta", [0.05, 0.3, 1.5, 4.0])
def test_beta_applied_twice_would_fail(beta):
  """Guards the guard: at these inputs a DPO with beta applied twice is far from the reference."""
  d = _data()
  loss, metrics = _call("dpo", d, beta=beta)
  correct = np_dpo(d, beta)
  beta_twice = _np_wmean(-np.log(_np_sigmoid(beta * beta * _np_h(d))), d["w"])
  np.testing.assert_allclose(loss, correct, rtol=RTOL, atol=ATOL)
  assert abs(beta_twice - correct) > 100 * (ATOL + RTOL * abs(correct))
  assert abs(float(loss) - beta_twice) > 100 * (ATOL + RTOL * abs(correct))
  # Same for the implicit reward metric.
  reward_twice = _np_wmean(beta * beta * (d["pc"] - d["rc"]), d["w"])
  assert abs(float(metrics["rewards/chosen"]) - reward_twice) > 1e-3


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 3.0])
def test_policy_equals_reference_identities(beta):
  d = _data()
  d = {**d, "rc": d["pc"], "rr": d["pr"]}
  for name, hp in [("dpo", {}), ("cdpo", dict(label_smoothing=0.2)),
                   ("robust_dpo", dict(label_noise=0.2))]:
    loss, metrics = _call(name, d, beta=beta, **hp)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/margin"], 0.0, atol=1e-7)
    np.testing.assert_allclose(metrics["rewards/accuracy"], 0.0)  # Ties are not correct.
  np.testing.assert_allclose(_call("ipo", d, beta=beta)[0], 1.0 / (4 * beta**2), rtol=1e-6)
  np.testing.assert_allclose(_call("hinge", d, beta=beta)[0], 1.0, rtol=1e-6)


def test_zero_smoothing_and_zero_noise_equal_dpo():
  d = _data()
  ref, _ = _call("dpo", d, beta=0.4)
  np.testing.assert_allclose(_call("cdpo", d, beta=0.4, label_smoothing=0.0)[0], ref, rtol=1e-6)
  np.testing.assert_allclose(_call("robust_dpo", d, beta=0.4, label_noise=0.0)[0], ref, rtol=1e-6)


def test_smoothing_and_noise_change_the_loss_differently():
  d = _data()
  cdpo, _ = _call("cdpo", d, beta=0.4, label_smoothing=0.2)
  rdpo, _ = _call("robust_dpo", d, beta=0.4, label_noise=0.2)
  base, _ = _call("dpo", d, beta=0.4)
  assert float(cdpo) > float(base) + 1e-3   # cDPO adds a positive term.
  assert abs(float(rdpo) - float(cdpo)) > 1e-3


@pytest.mark.parametrize("name,hp", CASES)
def test_weights_matter(name, hp):
  d = _data()
  weighted, _ = _call(name, d, **hp)
  unweighted, _ = _call(name, d, weights=False, **hp)
  np.testing.assert_allclose(unweighted, NP_REFS[name]({**d, "w": np.ones(B)}, **hp),
                             rtol=RTOL, atol=ATOL)
  assert abs(float(weighted) - float(unweighted)) > 1e-4


@pytest.mark.parametrize("name,hp", CASES)
def test_zero_weight_pairs_are_ignored(name, hp):
  d = _data()
  d["w"] = d["w"].copy()
  d["w"][0] = 0.0
  loss, metrics = _call(name, d, **hp)
  garbage = {k: v.copy() for k, v in d.items()}
  for k in ("pc", "pr", "rc", "rr"):
    garbage[k][0] = -1e4
  garbage["lc"][0] = 0.0  # A padding pair of length 0 must not produce NaN.
  garbage["lr"][0] = 0.0
  loss_g, metrics_g = _call(name, garbage, **hp)
  np.testing.assert_allclose(loss_g, loss, rtol=1e-6)
  np.testing.assert_allclose(metrics_g["rewards/margin"], metrics["rewards/margin"], rtol=1e-6)
  all_zero, _ = _call(name, {**d, "w": np.zeros(B)}, **hp)
  assert float(all_zero) == 0.0


@pytest.mark.parametrize("name,hp", CASES)
def test_gradients_match_finite_differences(name, hp):
  d = _data()
  fn = dpo.get_preference_loss(name)
  with jax.enable_x64(True):
    a = {k: jnp.asarray(v, jnp.float64) for k, v in d.items()}

    def loss_of(pc, pr, rc, rr):
      return fn(pc, pr, rc, rr, weights_B=a["w"], chosen_len_B=a["lc"], rejected_len_B=a["lr"],
                **hp)[0]

    check_grads(loss_of, (a["pc"], a["pr"], a["rc"], a["rr"]), order=1, modes=("rev",))


def test_dpo_gradient_matches_closed_form():
  """dl/dlogp_c = -beta * sigmoid(-beta h) * w / sum(w); the rejected gradient is its negative."""
  d = _data()
  beta = 0.6
  grad_c, grad_r = jax.grad(
      lambda pc, pr: dpo.dpo_loss(pc, pr, jnp.asarray(d["rc"], jnp.float32),
                                  jnp.asarray(d["rr"], jnp.float32),
                                  weights_B=jnp.asarray(d["w"], jnp.float32), beta=beta)[0],
      argnums=(0, 1))(jnp.asarray(d["pc"], jnp.float32), jnp.asarray(d["pr"], jnp.float32))
  expected = -beta * _np_sigmoid(-beta * _np_h(d)) * d["w"] / d["w"].sum()
  np.testing.assert_allclose(grad_c, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grad_r, -expected, rtol=1e-5, atol=1e-7)


def test_metrics_carry_no_gradient():
  """Metrics are stop-gradient: differentiating a metric gives zeros."""
  d = _data()
  g = jax.grad(lambda pc: _call_arr("dpo", pc, d)[1]["rewards/margin"])(
      jnp.asarray(d["pc"], jnp.float32))
  np.testing.assert_array_equal(g, np.zeros(B))


def _call_arr(name, pc, d):
  f32 = lambda k: jnp.asarray(d[k], jnp.float32)
  return dpo.get_preference_loss(name)(pc, f32("pr"), f32("rc"), f32("rr"), beta=0.5)


@pytest.mark.parametrize("name,hp", CASES[::3])
def test_jit_matches_eager(name, hp):
  d = _data(1)
  f32 = {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}
  fn = functools.partial(dpo.get_preference_loss(name), **hp)
  args = (f32["pc"], f32["pr"], f32["rc"], f32["rr"])
  kw = dict(weights_B=f32["w"], chosen_len_B=f32["lc"], rejected_len_B=f32["lr"])
  np.testing.assert_allclose(jax.jit(fn)(*args, **kw)[0], fn(*args, **kw)[0], rtol=1e-6)


def test_docstring_examples():
  one = lambda x: jnp.array([x], jnp.float32)
  np.testing.assert_allclose(dpo.dpo_loss(one(-4.0), one(-6.0), one(-5.0), one(-5.0),
                                          beta=0.5)[0], 0.3133, atol=1e-4)
  np.testing.assert_allclose(dpo.simpo_loss(one(-4.0), one(-9.0), chosen_len_B=one(2.0),
                                            rejected_len_B=one(3.0), beta=2.0, gamma=0.5)[0],
                             0.2014, atol=1e-4)
  np.testing.assert_allclose(dpo.orpo_loss(one(-1.0), one(-2.0), chosen_len_B=one(2.0),
                                           rejected_len_B=one(2.0), lam=0.1)[0], 0.5320, atol=1e-4)


def test_reference_free_losses_ignore_the_reference():
  d = _data()
  for name in dpo.REFERENCE_FREE_LOSSES:
    fn = dpo.get_preference_loss(name)
    f32 = lambda k: jnp.asarray(d[k], jnp.float32)
    kw = dict(chosen_len_B=f32("lc"), rejected_len_B=f32("lr"))
    np.testing.assert_array_equal(fn(f32("pc"), f32("pr"), **kw)[0],
                                  fn(f32("pc"), f32("pr"), f32("rc"), f32("rr"), **kw)[0])


def test_bad_inputs_raise_clear_errors():
  x = jnp.zeros(3)
  with pytest.raises(ValueError, match="ref_rejected_logp_B"):
    dpo.dpo_loss(x, x, x, jnp.zeros(4))
  with pytest.raises(ValueError, match="ref_chosen_logp_B.*None"):
    dpo.ipo_loss(x, x)
  with pytest.raises(ValueError, match="chosen_len_B"):
    dpo.simpo_loss(x, x)
  with pytest.raises(ValueError, match=r"chosen_logp_B.*\[B\]"):
    dpo.hinge_loss(jnp.zeros((3, 2)), x, x, x)
  with pytest.raises(ValueError, match="weights_B"):
    dpo.dpo_loss(x, x, x, x, weights_B=jnp.ones(2))
  with pytest.raises(ValueError, match="beta"):
    dpo.dpo_loss(x, x, x, x, beta=0.0)
  with pytest.raises(ValueError, match="label_smoothing"):
    dpo.conservative_dpo_loss(x, x, x, x, label_smoothing=0.7)
  with pytest.raises(ValueError, match="label_noise"):
    dpo.robust_dpo_loss(x, x, x, x, label_noise=0.5)
  with pytest.raises(ValueError, match="unknown preference loss 'kto'"):
    dpo.get_preference_loss("kto")
