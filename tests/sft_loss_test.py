"""Tests for rlhf_jax.losses.sft against a float64 NumPy reference built from raw logits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rlhf_jax.losses import sft
from rlhf_jax.ops import logprobs

B, L, V = 3, 6, 7
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(B, L, V)) * 2.0
TOKENS = RNG.integers(0, V, size=(B, L))
# Make the model's argmax right on two response targets and on one prompt target (which must not
# count towards the accuracy).
for _b, _t in [(0, 3), (2, 2), (1, 2)]:
  TOKENS[_b, _t] = LOGITS[_b, _t - 1].argmax()
# 1 on response tokens. Prompts have different lengths, the last row is padded at the end.
RESPONSE = np.array([[0, 0, 1, 1, 1, 1],
                     [0, 0, 0, 0, 1, 1],
                     [0, 1, 1, 1, 0, 0]], np.int32)


def _np_reference(aggregation, fixed_length=None, mask=RESPONSE):
  """Float64 NumPy: shift, log-softmax, gather, mask, aggregate."""
  z = LOGITS[:, :-1]
  z = z - z.max(-1, keepdims=True)
  logp_all = z - np.log(np.exp(z).sum(-1, keepdims=True))
  targets, m = TOKENS[:, 1:], mask[:, 1:].astype(bool)
  nll = -np.take_along_axis(logp_all, targets[..., None], -1)[..., 0]
  if aggregation == "token_mean":
    loss = nll[m].mean()
  elif aggregation == "sequence_mean":
    loss = np.mean([nll[b][m[b]].mean() for b in range(B)])
  else:
    loss = nll[m].sum() / (B * fixed_length)
  accuracy = (logp_all.argmax(-1) == targets)[m].mean()
  return loss, nll[m].mean(), accuracy, m.sum()


def _jax_loss(logits, aggregation, fixed_length=None, mask=RESPONSE):
  shifted, targets, target_mask = logprobs.shift_for_next_token(
      logits, jnp.asarray(TOKENS), jnp.asarray(mask))
  logp = logprobs.token_logprobs(shifted, targets)
  correct = jnp.argmax(shifted, -1) == targets
  return sft.sft_loss(logp, target_mask, aggregation, correct_BxL=correct, fixed_length=fixed_length)


@pytest.mark.parametrize("aggregation,fixed_length", [
    ("token_mean", None), ("sequence_mean", None), ("fixed_length", 4)])
def test_matches_numpy_reference(aggregation, fixed_length):
  loss, metrics = _jax_loss(jnp.asarray(LOGITS, jnp.float32), aggregation, fixed_length)
  want_loss, want_nll, want_acc, want_count = _np_reference(aggregation, fixed_length)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["nll_per_token"], want_nll, rtol=1e-5)
  np.testing.assert_allclose(metrics["perplexity"], np.exp(want_nll), rtol=1e-5)
  np.testing.assert_allclose(metrics["accuracy"], want_acc, rtol=1e-6)
  assert metrics["num_tokens"] == want_count == 9
  assert want_acc == pytest.approx(2 / 9)


def test_the_prompt_mask_and_the_aggregation_matter():
  all_tokens = np.ones_like(RESPONSE)
  assert abs(_np_reference("token_mean")[0] - _np_reference("token_mean", mask=all_tokens)[0]) > 0.1
  assert abs(_np_reference("token_mean")[0] - _np_reference("sequence_mean")[0]) > 0.01
  loss_all, _ = _jax_loss(jnp.asarray(LOGITS, jnp.float32), "token_mean", mask=all_tokens)
  np.testing.assert_allclose(loss_all, _np_reference("token_mean", mask=all_tokens)[0], rtol=1e-5)
  # Logits on prompt positions do not move the loss at all.
  perturbed = LOGITS.copy()
  perturbed[0, 0] += 5.0  # predicts token 1 of row 0, a prompt token
  loss_a, _ = _jax_loss(jnp.asarray(LOGITS, jnp.float32), "token_mean")
  loss_b, _ = _jax_loss(jnp.asarray(perturbed, jnp.float32), "token_mean")
  np.testing.assert_array_equal(loss_a, loss_b)


def test_docstring_example_and_empty_mask():
  logp = jnp.log(jnp.array([[0.9, 0.5, 0.25]]))
  loss, metrics = sft.sft_loss(logp, jnp.array([[0, 1, 1]]))
  np.testing.assert_allclose(loss, 1.5 * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(metrics["perplexity"], 2 ** 1.5, rtol=1e-6)
  assert "accuracy" not in metrics
  loss, metrics = sft.sft_loss(logp, jnp.zeros((1, 3), jnp.int32))
  assert loss == 0.0 and metrics["perplexity"] == 1.0 and metrics["num_tokens"] == 0


def test_gradient_matches_analytic():
  # d loss / d logits[b, t] = (softmax - onehot(target)) * mask / count   (token mean).
  grad = jax.grad(lambda z: _jax_loss(z, "token_mean")[0])(jnp.asarray(LOGITS, jnp.float32))
  z = LOGITS[:, :-1]
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  m = RESPONSE[:, 1:]
  want = np.zeros_like(LOGITS)
  want[:, :-1] = (p - np.eye(V)[TOKENS[:, 1:]]) * m[..., None] / m.sum()
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


def test_finite_difference_gradients_in_float64():
  with jax.enable_x64(True):
    logp = jnp.asarray(-RNG.uniform(0.1, 3.0, size=(B, L)))
    check_grads(lambda x: sft.sft_loss(x, jnp.asarray(RESPONSE), "sequence_mean")[0], (logp,),
                order=1, modes=["rev"])


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="loss_mask shape"):
    sft.sft_loss(jnp.zeros((B, L)), jnp.zeros((B, L - 1)))
  with pytest.raises(ValueError, match=r"logp must be \[B, L\]"):
    sft.sft_loss(jnp.zeros((B,)), jnp.zeros((B,)))
  with pytest.raises(ValueError, match="correct shape"):
    sft.sft_loss(jnp.zeros((B, L)), jnp.zeros((B, L)), correct_BxL=jnp.zeros((B,), bool))
  with pytest.raises(ValueError, match="fixed_length"):
    sft.sft_loss(jnp.zeros((B, L)), jnp.zeros((B, L)), "fixed_length")
