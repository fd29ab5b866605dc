"""Tests for rlhf_jax.ops.logprobs: float64 NumPy references and chunked == naive."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.ops import logprobs as lp

B, L, D = 2, 3, 4


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_logp_ent(logits, tokens, temperature):
  logp_all = _np_log_softmax(np.asarray(logits, np.float64) / temperature)
  logp = np.take_along_axis(logp_all, np.asarray(tokens)[..., None], -1)[..., 0]
  ent = -(np.exp(logp_all) * logp_all).sum(-1)
  return logp, ent


def _problem(vocab, seed=0, scale=1.0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(B, L, D)) * scale
  unembed = rng.normal(size=(D, vocab))
  tokens = rng.integers(0, vocab, size=(B, L))
  tokens[0, 0] = vocab - 1  # the last (possibly partial) chunk is hit
  tokens[1, 2] = 0
  return jnp.asarray(hidden, dtype), jnp.asarray(unembed, dtype), jnp.asarray(tokens, jnp.int32)


def _naive(hidden, unembed, tokens, temperature):
  logits = jnp.einsum("bld,dv->blv", hidden, unembed, preferred_element_type=jnp.float32)
  return lp.token_logprobs_and_entropy(logits, tokens, temperature)


# --- full-logits path -----------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_token_logprobs_and_entropy_match_numpy(temperature):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(B, L, 7)) * 3.0
  tokens = rng.integers(0, 7, size=(B, L))
  want_logp, want_ent = _np_logp_ent(logits, tokens, temperature)
  logits_j, tokens_j = jnp.asarray(logits, jnp.float32), jnp.asarray(tokens)
  logp, ent = lp.token_logprobs_and_entropy(logits_j, tokens_j, temperature)
  np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent, want_ent, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(lp.token_logprobs(logits_j, tokens_j, temperature), logp)
  np.testing.assert_array_equal(lp.entropy(logits_j, temperature), ent)


def test_temperature_changes_the_answer_and_docstring_examples():
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25]]]))
  logp, ent = lp.token_logprobs_and_entropy(logits, jnp.array([[1]]))
  np.testing.assert_allclose(logp, [[np.log(0.25)]], rtol=1e-6)
  np.testing.assert_allclose(ent, [[1.5 * np.log(2)]], rtol=1e-6)
  logp_hot = lp.token_logprobs(logits, jnp.array([[1]]), temperature=0.5)
  np.testing.assert_allclose(logp_hot, [[np.log(0.25**2 / (0.25 + 2 * 0.25**2))]], rtol=1e-6)
  np.testing.assert_allclose(lp.entropy(jnp.zeros((1, 1, 4))), [[np.log(4)]], rtol=1e-6)


def test_gradient_matches_analytic_softmax_gradient():
  # d logp_y / d logits = (onehot(y) - softmax(logits / T)) / T.
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(1, 1, 5))
  temperature = 0.7
  grad = jax.grad(lambda z: lp.token_logprobs(z, jnp.array([[3]]), temperature).sum())(
      jnp.asarray(logits, jnp.float32))
  want = (np.eye(5)[3] - np.exp(_np_log_softmax(logits / temperature))) / temperature
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


def test_finite_difference_gradients_in_float64():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    logits = jnp.asarray(rng.normal(size=(B, L, 5)), jnp.float64)
    tokens = jnp.asarray(rng.integers(0, 5, size=(B, L)))
    check_grads(lambda z: lp.token_logprobs_and_entropy(z, tokens, 0.7), (logits,), order=1,
                modes=["rev"])


def test_low_precision_inputs_are_upcast():
  logits = jnp.asarray(np.random.default_rng(4).normal(size=(B, L, 6)) * 4, jnp.bfloat16)
  tokens = jnp.zeros((B, L), jnp.int32)
  logp, ent = lp.token_logprobs_and_entropy(logits, tokens)
  assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
  want_logp, want_ent = _np_logp_ent(np.asarray(logits.astype(jnp.float32)), tokens, 1.0)
  np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent, want_ent, rtol=1e-5, atol=1e-5)


def test_minus_inf_logits_give_finite_entropy_and_gradients():
  logits = jnp.array([[[0.0, -jnp.inf, 1.0, -jnp.inf]]])
  tokens = jnp.array([[2]])
  ent = lp.entropy(logits)
  want = _np_logp_ent(np.array([[[0.0, 1.0]]]), np.array([[1]]), 1.0)
  np.testing.assert_allclose(ent, want[1], rtol=1e-6)
  np.testing.assert_allclose(lp.token_logprobs(logits, tokens), want[0], rtol=1e-6)
  grad = jax.grad(lambda z: jnp.sum(sum(lp.token_logprobs_and_entropy(z, tokens))))(logits)
  assert np.all(np.isfinite(grad)), grad


def test_out_of_range_tokens_give_nan_in_both_paths():
  hidden, unembed, _ = _problem(vocab=10)
  tokens = jnp.array([[-1, 10, 3], [0, 9, 11]], jnp.int32)
  naive, _ = _naive(hidden, unembed, tokens, 1.0)
  chunked = lp.chunked_token_logprobs(hidden, unembed, tokens, chunk_size=4)
  bad = np.array([[1, 1, 0], [0, 0, 1]], bool)
  for got in (naive, chunked):
    assert np.all(np.isnan(np.asarray(got)[bad])) and np.all(np.isfinite(np.asarray(got)[~bad]))
  np.testing.assert_allclose(np.asarray(chunked)[~bad], np.asarray(naive)[~bad], rtol=1e-5)


def test_shift_for_next_token():
  tokens = jnp.array([[10, 11, 20, 21]])
  mask = jnp.array([[0, 0, 1, 1]])
  logits = jnp.arange(4 * 3, dtype=jnp.float32).reshape(1, 4, 3)
  out_logits, targets, target_mask = lp.shift_for_next_token(logits, tokens, mask)
  np.testing.assert_array_equal(out_logits, logits[:, :3])
  np.testing.assert_array_equal(targets, [[11, 20, 21]])
  np.testing.assert_array_equal(target_mask, [[0, 1, 1]])
  hidden = jnp.ones((1, 4, 5))
  assert lp.shift_for_next_token(hidden, tokens, mask)[0].shape == (1, 3, 5)


def test_bad_inputs_raise_clear_errors():
  logits = jnp.zeros((B, L, 5))
  with pytest.raises(ValueError, match="tokens shape"):
    lp.token_logprobs(logits, jnp.zeros((B, L + 1), jnp.int32))
  with pytest.raises(ValueError, match="integer"):
    lp.token_logprobs(logits, jnp.zeros((B, L)))
  with pytest.raises(ValueError, match="temperature"):
    lp.entropy(logits, temperature=0.0)
  with pytest.raises(ValueError, match="mask shape"):
    lp.shift_for_next_token(logits, jnp.zeros((B, L), jnp.int32), jnp.zeros((B, L - 1)))
  with pytest.raises(ValueError, match="L >= 2"):
    lp.shift_for_next_token(logits[:, :1], jnp.zeros((B, 1), jnp.int32), jnp.zeros((B, 1)))
  with pytest.raises(ValueError, match="unembed rows"):
    lp.chunked_token_logprobs(jnp.zeros((B, L, D)), jnp.zeros((D + 1, 5)), jnp.zeros((B, L), int))
  with pytest.raises(ValueError, match="chunk_size"):
    lp.chunked_token_logprobs(jnp.zeros((B, L, D)), jnp.zeros((D, 5)), jnp.zeros((B, L), int),
                              chunk_size=0)


# --- chunked path ---------------------------------------------------------------------------------


def _loss(fn, ct_logp, ct_ent):
  """A scalar that touches both outputs with distinct cotangents, so no gradient term is hidden."""

  def loss(hidden, unembed, tokens, temperature):
    logp, ent = fn(hidden, unembed, tokens, temperature)
    return jnp.sum(logp * ct_logp) + jnp.sum(ent * ct_ent)

  return loss


@pytest.mark.parametrize("vocab,chunk_size,temperature", [
    (24, 8, 1.0), (24, 8, 0.7),  # V divisible by the chunk size
    (29, 8, 1.0), (29, 8, 0.7),  # not divisible: the last chunk overlaps the previous one
    (29, 1, 0.7), (29, 64, 0.7), (5, 2, 1.0)])  # one column per chunk; one chunk; tiny V
def test_chunked_equals_naive_values_and_gradients(vocab, chunk_size, temperature):
  hidden, unembed, tokens = _problem(vocab, seed=vocab + chunk_size)
  chunked = functools.partial(lp.chunked_token_logprobs, chunk_size=chunk_size, return_entropy=True)
  logp_c, ent_c = jax.jit(chunked)(hidden, unembed, tokens, temperature)
  logp_n, ent_n = _naive(hidden, unembed, tokens, temperature)
  np.testing.assert_allclose(logp_c, logp_n, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent_c, ent_n, rtol=1e-5, atol=1e-5)

  rng = np.random.default_rng(7)
  ct_logp = jnp.asarray(rng.normal(size=(B, L)), jnp.float32)
  ct_ent = jnp.asarray(rng.normal(size=(B, L)), jnp.float32)
  grads_c = jax.jit(jax.grad(_loss(chunked, ct_logp, ct_ent), argnums=(0, 1)))(
      hidden, unembed, tokens, temperature)
  grads_n = jax.grad(_loss(_naive, ct_logp, ct_ent), argnums=(0, 1))(
      hidden, unembed, tokens, temperature)
  for g_c, g_n in zip(grads_c, grads_n):
    np.testing.assert_allclose(g_c, g_n, rtol=1e-5, atol=1e-5)


def test_chunked_is_stable_for_large_logits():
  # Logits of order 1e3: without the running-max rescale exp() would overflow to inf.
  hidden, unembed, tokens = _problem(vocab=29, seed=5, scale=300.0)
  logp_c, ent_c = lp.chunked_token_logprobs(hidden, unembed, tokens, chunk_size=8,
                                            return_entropy=True)
  logp_n, ent_n = _naive(hidden, unembed, tokens, 1.0)
  assert np.all(np.isfinite(logp_c)) and np.all(np.isfinite(ent_c))
  np.testing.assert_allclose(logp_c, logp_n, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(ent_c, ent_n, rtol=1e-5, atol=1e-3)


def test_chunked_finite_difference_gradients_in_float64():
  with jax.enable_x64(True):
    hidden, unembed, tokens = _problem(vocab=11, seed=6, dtype=jnp.float64)
    fn = lambda h, w: lp.chunked_token_logprobs(h, w, tokens, 0.7, chunk_size=4,
                                                return_entropy=True)
    check_grads(fn, (hidden, unembed), order=1, modes=["rev"])


def test_chunked_bfloat16_inputs_accumulate_in_float32():
  hidden, unembed, tokens = _problem(vocab=29, seed=8, dtype=jnp.bfloat16)
  logp_c, ent_c = lp.chunked_token_logprobs(hidden, unembed, tokens, 0.7, chunk_size=8,
                                            return_entropy=True)
  assert logp_c.dtype == jnp.float32
  logp_n, ent_n = _naive(hidden, unembed, tokens, 0.7)
  np.testing.assert_allclose(logp_c, logp_n, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent_c, ent_n, rtol=1e-5, atol=1e-5)
  g_h, g_w = jax.grad(lambda h, w: jnp.sum(lp.chunked_token_logprobs(h, w, tokens, chunk_size=8)),
                      argnums=(0, 1))(hidden, unembed)
  assert g_h.dtype == jnp.bfloat16 and g_w.dtype == jnp.bfloat16


def _largest_intermediate(fn, *args):
  """Largest element count of any value in the jaxpr of `fn` (sub-jaxprs included)."""
  largest = 0

  def visit(jaxpr):
    nonlocal largest
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
      for param in eqn.params.values():
        for sub in (param if isinstance(param, (list, tuple)) else [param]):
          if hasattr(sub, "eqns"):
            visit(sub)
          elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
            visit(sub.jaxpr)

  visit(jax.make_jaxpr(fn)(*args).jaxpr)
  return largest


def test_chunked_never_materialises_full_logits_forward_or_backward():
  vocab, chunk = 37, 8
  hidden, unembed, tokens = _problem(vocab)  # D * V = 148 < B * L * V = 222

  def value_and_grads(fn):
    return jax.value_and_grad(lambda h, w: jnp.sum(sum(fn(h, w))), argnums=(0, 1))

  chunked = value_and_grads(lambda h, w: lp.chunked_token_logprobs(
      h, w, tokens, 0.7, chunk_size=chunk, return_entropy=True))
  naive = value_and_grads(lambda h, w: _naive(h, w, tokens, 0.7))
  assert _largest_intermediate(naive, hidden, unembed) >= B * L * vocab  # the probe can fail
  assert _largest_intermediate(chunked, hidden, unembed) < B * L * vocab
