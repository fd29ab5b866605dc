"""Tests for rlhf_jax.ops.kl: float64 NumPy references, exact expectations and Monte Carlo."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.ops import kl

# A known categorical pair (policy p, reference q), far from equal so every estimator differs.
P = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
Q = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
EXACT_KL_PQ = float(np.sum(P * np.log(P / Q)))


def _np_estimators(logp, ref_logp):
  logp, ref_logp = np.asarray(logp, np.float64), np.asarray(ref_logp, np.float64)
  r = ref_logp - logp
  return {"k1": logp - ref_logp, "k2": 0.5 * (logp - ref_logp) ** 2, "k3": np.exp(r) - 1 - r}


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_estimators_match_numpy(name):
  rng = np.random.default_rng(0)
  logp = np.log(rng.dirichlet(np.ones(6), size=(2, 3)))[..., 0]
  ref_logp = np.log(rng.dirichlet(np.ones(6), size=(2, 3)))[..., 0]
  got = kl.kl_estimator(name)(jnp.asarray(logp, jnp.float32), jnp.asarray(ref_logp, jnp.float32))
  assert got.shape == (2, 3) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_estimators(logp, ref_logp)[name], rtol=1e-5, atol=1e-6)


def test_docstring_values_and_identities():
  logp, ref_logp = jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25]))
  np.testing.assert_allclose(kl.kl_k1(logp, ref_logp), [np.log(2)], rtol=1e-6)
  np.testing.assert_allclose(kl.kl_k2(logp, ref_logp), [0.5 * np.log(2) ** 2], rtol=1e-6)
  np.testing.assert_allclose(kl.kl_k3(logp, ref_logp), [0.5 - 1 + np.log(2)], rtol=1e-5)
  same = jnp.array([-0.3, -2.0, -7.5])
  for name in ("k1", "k2", "k3"):
    np.testing.assert_array_equal(kl.kl_estimator(name)(same, same), np.zeros(3))


def test_k3_keeps_precision_near_zero():
  # r = 1e-4: k3 = r^2 / 2 + r^3 / 6 + ... ~ 5e-9, which exp(r) - 1 - r in float32 would lose.
  logp = jnp.array([-1.0], jnp.float32)
  ref_logp = logp + 1e-4
  r = np.float64(ref_logp[0]) - np.float64(logp[0])
  np.testing.assert_allclose(kl.kl_k3(logp, ref_logp), [np.expm1(r) - r], rtol=1e-3)


def test_exact_expectations_under_the_policy():
  # E_p[k1] = E_p[k3] = KL(p || q) exactly; E_p[k2] = 0.5 E_p[(log p/q)^2] (biased).
  logp, logq = jnp.log(jnp.asarray(P, jnp.float32)), jnp.log(jnp.asarray(Q, jnp.float32))
  expect = lambda name: float(np.sum(P * np.asarray(kl.kl_estimator(name)(logp, logq))))
  np.testing.assert_allclose(expect("k1"), EXACT_KL_PQ, rtol=1e-5)
  np.testing.assert_allclose(expect("k3"), EXACT_KL_PQ, rtol=1e-5)
  np.testing.assert_allclose(expect("k2"), 0.5 * np.sum(P * np.log(P / Q) ** 2), rtol=1e-5)
  assert abs(expect("k2") - EXACT_KL_PQ) > 0.05  # k2 really is biased here


def test_monte_carlo_means_of_k1_and_k3_approach_exact_kl():
  rng = np.random.default_rng(1)
  samples = rng.choice(len(P), size=200_000, p=P)
  logp = jnp.asarray(np.log(P)[samples], jnp.float32)
  ref_logp = jnp.asarray(np.log(Q)[samples], jnp.float32)
  for name in ("k1", "k3"):
    values = np.asarray(kl.kl_estimator(name)(logp, ref_logp), np.float64)
    stderr = values.std() / np.sqrt(values.size)
    assert abs(values.mean() - EXACT_KL_PQ) < 4 * stderr, (name, values.mean(), stderr)
  k1 = np.asarray(kl.kl_k1(logp, ref_logp))
  k3 = np.asarray(kl.kl_k3(logp, ref_logp))
  assert (k1 < 0).any()  # k1 is negative on some samples ...
  assert (k3 >= 0).all()  # ... k3 never is
  assert k3.std() < k1.std()  # and has the lower variance on this pair


def test_k3_is_non_negative_over_a_wide_range():
  r = jnp.linspace(-30.0, 30.0, 10001)
  assert np.all(np.asarray(kl.kl_k3(jnp.zeros_like(r), r)) >= 0)


def test_expected_gradients_as_losses():
  # Samples fixed from pi = softmax(theta); differentiate each estimator through logp only.
  # E_pi[grad k1] = 0, E_pi[grad k2] = grad KL(pi || ref), E_pi[grad k3] = grad KL(ref || pi).
  theta = jnp.log(jnp.asarray(P, jnp.float32))
  logq = jnp.log(jnp.asarray(Q, jnp.float32))
  pi = jnp.asarray(P, jnp.float32)

  def expected_grad(name):
    return jax.grad(lambda t: jnp.sum(pi * kl.kl_estimator(name)(jax.nn.log_softmax(t), logq)))(
        theta)

  # Independent reference: the analytic gradients w.r.t. the logits of a softmax.
  log_ratio = np.log(P / Q)
  grad_reverse = P * (log_ratio - np.sum(P * log_ratio))  # d KL(pi || q) / d theta
  grad_forward = P - Q  # d KL(q || pi) / d theta
  np.testing.assert_allclose(expected_grad("k1"), np.zeros(5), atol=1e-6)
  np.testing.assert_allclose(expected_grad("k2"), grad_reverse, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(expected_grad("k3"), grad_forward, rtol=1e-5, atol=1e-6)


def test_finite_difference_gradients_in_float64():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    logp = jnp.asarray(rng.normal(size=(2, 3)) - 2.0)
    ref_logp = jnp.asarray(rng.normal(size=(2, 3)) - 2.0)
    for name in ("k1", "k2", "k3"):
      check_grads(kl.kl_estimator(name), (logp, ref_logp), order=1, modes=["rev"])
    logits_p = jnp.asarray(rng.normal(size=(2, 3, 4)))
    logits_q = jnp.asarray(rng.normal(size=(2, 3, 4)))
    check_grads(lambda a, b: kl.full_kl(a, b, 0.7), (logits_p, logits_q), order=1, modes=["rev"])


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_full_kl_matches_numpy(temperature):
  rng = np.random.default_rng(3)
  logits_p = rng.normal(size=(2, 3, 7)) * 2
  logits_q = rng.normal(size=(2, 3, 7)) * 2
  lp, lq = _np_log_softmax(logits_p / temperature), _np_log_softmax(logits_q / temperature)
  want = np.sum(np.exp(lp) * (lp - lq), -1)
  got = kl.full_kl(jnp.asarray(logits_p, jnp.float32), jnp.asarray(logits_q, jnp.float32),
                   temperature)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(got) >= -1e-6)
  np.testing.assert_allclose(kl.full_kl(jnp.asarray(logits_p), jnp.asarray(logits_p)),
                             np.zeros((2, 3)), atol=1e-6)


def test_full_kl_equals_expected_k1_and_handles_masked_vocab():
  logp, logq = np.log(P), np.log(Q)
  got = kl.full_kl(jnp.asarray(logp[None, None], jnp.float32),
                   jnp.asarray(logq[None, None], jnp.float32))
  np.testing.assert_allclose(got, [[EXACT_KL_PQ]], rtol=1e-5)
  # p = 0 on a token (logit -inf) adds nothing; the value and the gradient stay finite.
  logits_p = jnp.array([[[0.0, -jnp.inf, 1.0]]])
  logits_q = jnp.array([[[0.5, 0.0, 0.0]]])
  p2 = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
  q3 = np.exp([0.5, 0.0, 0.0]) / np.exp([0.5, 0.0, 0.0]).sum()
  want = np.sum(p2 * np.log(p2 / q3[[0, 2]]))
  np.testing.assert_allclose(kl.full_kl(logits_p, logits_q), [[want]], rtol=1e-5)
  grads = jax.grad(lambda a, b: jnp.sum(kl.full_kl(a, b)), argnums=(0, 1))(logits_p, logits_q)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
    kl.kl_estimator("k4")
  with pytest.raises(ValueError, match="ref_logp shape"):
    kl.kl_k1(jnp.zeros((2, 3)), jnp.zeros((2, 1)))
  with pytest.raises(ValueError, match="logits_q shape"):
    kl.full_kl(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 4)))
  with pytest.raises(ValueError, match="temperature"):
    kl.full_kl(jnp.zeros((1, 2, 3)), jnp.zeros((1, 2, 3)), -1.0)
