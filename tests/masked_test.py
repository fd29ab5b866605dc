"""Tests for rlhf_jax.ops.masked against float64 NumPy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.ops import masked

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 5)) * 2.0 + 1.0
# Rows of different lengths (the row weights then differ between token and sequence means) and an
# all-zero row.
MASK = np.array([[1, 1, 1, 1, 1],
                 [1, 1, 0, 0, 0],
                 [0, 0, 0, 0, 0]], dtype=np.int32)


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def test_masked_sum_and_mean_match_numpy():
  m = MASK.astype(bool)
  np.testing.assert_allclose(masked.masked_sum(_f32(X), MASK), X[m].sum(), rtol=1e-6)
  np.testing.assert_allclose(masked.masked_sum(_f32(X), MASK, axis=1), (X * MASK).sum(1),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(masked.masked_mean(_f32(X), MASK), X[m].mean(), rtol=1e-6)
  row_means = [X[0].mean(), X[1, :2].mean(), 0.0]  # empty row: 0, not NaN
  np.testing.assert_allclose(masked.masked_mean(_f32(X), MASK, axis=1), row_means, rtol=1e-6)
  np.testing.assert_allclose(masked.masked_mean(_f32(X), MASK, denominator=4.0),
                             X[m].sum() / 4.0, rtol=1e-6)


def test_masked_entries_never_leak_even_when_non_finite():
  x = X.copy()
  x[2, :] = np.nan
  x[1, 3] = np.inf
  assert np.isfinite(masked.masked_sum(_f32(x), MASK))
  grad = jax.grad(lambda v: masked.masked_mean(v, MASK))(_f32(x))
  np.testing.assert_allclose(grad, MASK / MASK.sum(), rtol=1e-6)


def test_masked_var_biased_and_unbiased():
  vals = X[MASK.astype(bool)]
  np.testing.assert_allclose(masked.masked_var(_f32(X), MASK), vals.var(), rtol=1e-5)
  np.testing.assert_allclose(masked.masked_var(_f32(X), MASK, unbiased=True), vals.var(ddof=1),
                             rtol=1e-5)


def test_masked_whiten():
  m = MASK.astype(bool)
  vals = X[m]
  out = np.asarray(masked.masked_whiten(_f32(X), MASK))
  np.testing.assert_allclose(out[m], (vals - vals.mean()) / np.sqrt(vals.var() + 1e-8), rtol=1e-5,
                             atol=1e-6)
  assert np.all(out[~m] == 0.0)
  out_keep = np.asarray(masked.masked_whiten(_f32(X), MASK, shift_mean=False))
  np.testing.assert_allclose(out_keep[m], (vals - vals.mean()) / vals.std() + vals.mean(),
                             rtol=1e-5)
  assert np.all(out_keep[~m] == 0.0)


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "fixed_length"])
def test_aggregate_loss_modes(mode):
  m = MASK.astype(bool)
  if mode == "token_mean":
    want = X[m].sum() / m.sum()
  elif mode == "sequence_mean":
    want = (X[0].mean() + X[1, :2].mean() + 0.0) / 3  # an empty row counts as a 0 in the mean
  else:
    want = X[m].sum() / (3 * 7)
  fixed_length = 7 if mode == "fixed_length" else None
  got = masked.aggregate_loss(_f32(X), MASK, mode, fixed_length=fixed_length)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_aggregate_loss_modes_disagree_on_uneven_masks():
  vals = {mode: float(masked.aggregate_loss(_f32(X), MASK, mode, fixed_length=5))
          for mode in ("token_mean", "sequence_mean", "fixed_length")}
  assert len({round(v, 5) for v in vals.values()}) == 3, vals


def test_aggregate_loss_gradients_are_mask_over_denominator():
  grad_token = jax.grad(lambda v: masked.aggregate_loss(v, MASK, "token_mean"))(_f32(X))
  np.testing.assert_allclose(grad_token, MASK / MASK.sum(), rtol=1e-6)
  grad_seq = jax.grad(lambda v: masked.aggregate_loss(v, MASK, "sequence_mean"))(_f32(X))
  lengths = np.maximum(MASK.sum(1, keepdims=True), 1)
  np.testing.assert_allclose(grad_seq, MASK / lengths / 3, rtol=1e-6)


def test_errors_are_clear():
  with pytest.raises(ValueError, match="mask shape"):
    masked.masked_sum(_f32(X), MASK[:, :1])
  with pytest.raises(ValueError, match="fixed_length"):
    masked.aggregate_loss(_f32(X), MASK, "fixed_length")
  with pytest.raises(ValueError, match="unknown loss aggregation"):
    masked.aggregate_loss(_f32(X), MASK, "mean")
