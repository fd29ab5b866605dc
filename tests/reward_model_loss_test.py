"""Tests for rlhf_jax.losses.reward_model against a float64 NumPy reference."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.losses import reward_model as rm

R_C = np.array([1.5, -0.2, 0.3, 2.0, -1.0, 0.4])
R_R = np.array([0.5, 0.6, 0.3, -1.0, -0.5, 1.2])  # pair 2 is level, pairs 1, 4, 5 are "wrong"
MARGIN = np.array([0.0, 1.0, 0.5, 2.0, 0.25, 0.0])
WEIGHTS = np.array([1.0, 0.2, 0.7, 0.9, 0.0, 0.5])
TIE = np.array([False, False, False, True, False, True])


def _np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _np_loss(r_c, r_r, margin=None, eps=0.0, weights=None, tie=None, center_coef=0.0):
  r_c, r_r = np.asarray(r_c, np.float64), np.asarray(r_r, np.float64)
  diff = r_c - r_r
  d = diff - (0.0 if margin is None else margin)
  pair = -(1 - eps) * _np_log_sigmoid(d) - eps * _np_log_sigmoid(-d)
  if tie is not None:
    pair = np.where(tie, -0.5 * _np_log_sigmoid(diff) - 0.5 * _np_log_sigmoid(-diff), pair)
  w = np.ones_like(r_c) if weights is None else weights
  return np.sum(w * pair) / np.sum(w) + center_coef * np.mean((r_c + r_r) ** 2)


def _np_grads(r_c, r_r, margin=None, eps=0.0, weights=None, tie=None, center_coef=0.0):
  """Hand-derived d loss / d (r_c, r_r)."""
  sig = lambda x: 1 / (1 + np.exp(-x))
  diff = r_c - r_r
  d = diff - (0.0 if margin is None else margin)
  g = sig(d) - (1 - eps)  # d pair / d r_c
  if tie is not None:
    g = np.where(tie, sig(diff) - 0.5, g)
  w = np.ones_like(r_c) if weights is None else weights
  g = g * w / w.sum()
  center = center_coef * 2 * (r_c + r_r) / r_c.size
  return g + center, -g + center


def _j(x):
  return None if x is None else jnp.asarray(x)


OPTIONS = {
    "margin_B": MARGIN, "label_smoothing": 0.15, "weights_B": WEIGHTS, "tie_B": TIE,
    "center_coef": 0.3,
}


@pytest.mark.parametrize("used", [
    (), ("margin_B",), ("label_smoothing",), ("weights_B",), ("tie_B",), ("center_coef",),
    ("margin_B", "label_smoothing", "weights_B", "tie_B", "center_coef")])
def test_matches_numpy_reference_and_each_option_changes_the_answer(used):
  kwargs = {name: OPTIONS[name] for name in used}
  np_kwargs = dict(margin=kwargs.get("margin_B"), eps=kwargs.get("label_smoothing", 0.0),
                   weights=kwargs.get("weights_B"), tie=kwargs.get("tie_B"),
                   center_coef=kwargs.get("center_coef", 0.0))
  jax_kwargs = {k: (_j(v) if k.endswith("_B") else v) for k, v in kwargs.items()}
  loss, metrics = jax.jit(lambda a, b: rm.bradley_terry_loss(a, b, **jax_kwargs))(
      jnp.asarray(R_C, jnp.float32), jnp.asarray(R_R, jnp.float32))
  want = _np_loss(R_C, R_R, **np_kwargs)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-6)
  if used:
    assert abs(want - _np_loss(R_C, R_R)) > 1e-2, "this option does not change the answer here"

  g_c, g_r = jax.grad(lambda a, b: rm.bradley_terry_loss(a, b, **jax_kwargs)[0], argnums=(0, 1))(
      jnp.asarray(R_C, jnp.float32), jnp.asarray(R_R, jnp.float32))
  want_c, want_r = _np_grads(R_C, R_R, **np_kwargs)
  np.testing.assert_allclose(g_c, want_c, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g_r, want_r, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
def test_several_label_smoothing_values(eps):
  loss, _ = rm.bradley_terry_loss(jnp.asarray(R_C), jnp.asarray(R_R), margin_B=jnp.asarray(MARGIN),
                                  label_smoothing=eps)
  np.testing.assert_allclose(loss, _np_loss(R_C, R_R, margin=MARGIN, eps=eps), rtol=1e-6)


def test_special_cases():
  level = jnp.full((4,), 0.7)
  for eps, tie in itertools.product([0.0, 0.3], [None, jnp.array([True, False, True, False])]):
    loss, metrics = rm.bradley_terry_loss(level, level, label_smoothing=eps, tie_B=tie)
    np.testing.assert_allclose(loss, np.log(2), rtol=1e-6)  # equal rewards: log 2
    assert metrics["rewards/accuracy"] == 0.0  # a level pair is not ranked correctly
  # Label smoothing 0.5 forgets the label: swapping the sides changes nothing.
  a, b = jnp.asarray(R_C), jnp.asarray(R_R)
  np.testing.assert_allclose(rm.bradley_terry_loss(a, b, label_smoothing=0.5)[0],
                             rm.bradley_terry_loss(b, a, label_smoothing=0.5)[0], rtol=1e-6)
  # A tie has no sides, and its margin is ignored.
  tie = jnp.ones((6,), bool)
  np.testing.assert_allclose(rm.bradley_terry_loss(a, b, tie_B=tie)[0],
                             rm.bradley_terry_loss(b, a, tie_B=tie, margin_B=_j(MARGIN))[0],
                             rtol=1e-6)
  # Weights: scale-free, and a zero weight drops the pair.
  w = jnp.asarray(WEIGHTS)
  np.testing.assert_allclose(rm.bradley_terry_loss(a, b, weights_B=w)[0],
                             rm.bradley_terry_loss(a, b, weights_B=3.0 * w)[0], rtol=1e-6)
  keep = WEIGHTS > 0
  np.testing.assert_allclose(rm.bradley_terry_loss(a, b, weights_B=jnp.ones(6) * keep)[0],
                             rm.bradley_terry_loss(a[keep], b[keep])[0], rtol=1e-6)
  # A common offset leaves the Bradley-Terry term alone; only the centering term sees it.
  _, metrics = rm.bradley_terry_loss(a + 10.0, b + 10.0, center_coef=0.1)
  np.testing.assert_allclose(metrics["loss/bradley_terry"], rm.bradley_terry_loss(a, b)[0], rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/center"], np.mean((R_C + R_R + 20.0) ** 2), rtol=1e-6)


def test_large_reward_gaps_are_stable():
  r_c = jnp.array([1e4, -1e4], jnp.float32)
  r_r = jnp.zeros(2, jnp.float32)
  loss, _ = rm.bradley_terry_loss(r_c, r_r, label_smoothing=0.1)
  np.testing.assert_allclose(loss, 0.5 * (0.1 * 1e4 + 0.9 * 1e4), rtol=1e-6)
  grads = jax.grad(lambda x: rm.bradley_terry_loss(x, r_r, label_smoothing=0.1)[0])(r_c)
  np.testing.assert_allclose(grads, [0.5 * 0.1, -0.5 * 0.9], rtol=1e-6)


def test_metrics():
  _, metrics = rm.bradley_terry_loss(jnp.asarray(R_C), jnp.asarray(R_R), tie_B=jnp.asarray(TIE),
                                     weights_B=jnp.asarray(WEIGHTS))
  decided = ~TIE
  diff = R_C - R_R
  np.testing.assert_allclose(metrics["rewards/accuracy"], np.mean(diff[decided] > 0), rtol=1e-6)
  assert metrics["rewards/accuracy"] == pytest.approx(1 / 4)  # pairs 0..5: ties 3, 5; level 2; wrong 1, 4
  np.testing.assert_allclose(metrics["rewards/margin"], diff[decided].mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/chosen"], R_C.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/rejected"], R_R.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/std"], np.concatenate([R_C, R_R]).std(), rtol=1e-6)
  _, all_ties = rm.bradley_terry_loss(jnp.asarray(R_C), jnp.asarray(R_R), tie_B=jnp.ones(6, bool))
  assert all_ties["rewards/accuracy"] == 0.0 and all_ties["rewards/margin"] == 0.0


def test_docstring_example():
  loss, _ = rm.bradley_terry_loss(jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0]))
  np.testing.assert_allclose(loss, 0.5 * (np.log1p(np.exp(-1.0)) + np.log(2)), rtol=1e-6)


def test_finite_difference_gradients_in_float64():
  with jax.enable_x64(True):
    fn = lambda a, b, m, w: rm.bradley_terry_loss(a, b, margin_B=m, weights_B=w, tie_B=_j(TIE),
                                                  label_smoothing=0.2, center_coef=0.3)[0]
    args = tuple(jnp.asarray(x, jnp.float64) for x in (R_C, R_R, MARGIN, WEIGHTS + 0.1))
    check_grads(fn, args, order=1, modes=["rev"])


def test_bad_inputs_raise_clear_errors():
  r = jnp.zeros(4)
  with pytest.raises(ValueError, match="r_rejected shape"):
    rm.bradley_terry_loss(r, jnp.zeros(3))
  with pytest.raises(ValueError, match="margin shape"):
    rm.bradley_terry_loss(r, r, margin_B=jnp.zeros((4, 1)))
  with pytest.raises(ValueError, match="weights shape"):
    rm.bradley_terry_loss(r, r, weights_B=jnp.zeros(5))
  with pytest.raises(ValueError, match="tie shape"):
    rm.bradley_terry_loss(r, r, tie_B=jnp.zeros(5, bool))
  with pytest.raises(ValueError, match=r"r_chosen must be \[B\]"):
    rm.bradley_terry_loss(jnp.zeros((2, 2)), jnp.zeros((2, 2)))
  with pytest.raises(ValueError, match="label_smoothing"):
    rm.bradley_terry_loss(r, r, label_smoothing=0.6)
  with pytest.raises(ValueError, match="center_coef"):
    rm.bradley_terry_loss(r, r, center_coef=-1.0)
