"""Tests of the decoder: shapes, logical names, masking (padding, packing), KV cache, heads, dtypes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import models

CFG = models.get_model_config("test")


@pytest.fixture(scope="module")
def lm_and_params(test_lm):
  return test_lm


def test_param_count_and_every_param_has_logical_names():
  shapes = lambda cfg: jax.eval_shape(lambda k: models.init_params(models.CausalLM(cfg), k), jax.random.key(0))  # noqa: E731
  leaves = jax.tree.leaves(shapes(CFG), is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for x in leaves:
    assert len(x.names) == len(x.value.shape)
  assert sum(np.prod(x.value.shape) for x in leaves) == CFG.num_params()
  tied = CFG.replace(tie_embeddings=True)
  tied_params = nn.unbox(shapes(tied))
  assert "lm_head" not in tied_params
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(tied_params)) == tied.num_params()


@pytest.mark.parametrize("field,value,match", [
    ("num_kv_heads", 3, "num_kv_heads"), ("head_dim", 7, "head_dim"), ("compute_dtype", "fp8", "compute_dtype"),
    ("d_model", 0, "d_model")])
def test_bad_config_names_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    models.get_model_config("test", **{field: value})


def test_unknown_preset():
  with pytest.raises(ValueError, match="unknown model preset"):
    models.get_model_config("huge")


def test_positions_from_segments():
  seg = jnp.array([[0, 0, 1, 1, 1], [1, 1, 2, 2, 0]])
  np.testing.assert_array_equal(models.positions_from_segments(seg), [[0, 0, 0, 1, 2], [0, 1, 0, 1, 0]])


def test_left_padding_does_not_change_real_tokens(lm_and_params):
  lm, params = lm_and_params
  toks = jax.random.randint(jax.random.key(1), (1, 6), 4, CFG.vocab_size)
  ref = lm.apply({"params": params}, toks)
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), toks], axis=1)
  seg = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
  out = lm.apply({"params": params}, padded, None, seg)
  np.testing.assert_allclose(out.logits[:, 3:], ref.logits, atol=1e-5)
  assert np.all(np.isfinite(out.logits))  # padding rows attend to nothing yet stay finite


def test_packed_rows_equal_separate_rows(lm_and_params):
  lm, params = lm_and_params
  a = jax.random.randint(jax.random.key(2), (1, 4), 4, CFG.vocab_size)
  b = jax.random.randint(jax.random.key(3), (1, 3), 4, CFG.vocab_size)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 1), jnp.int32)], axis=1)
  seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0]])
  out = lm.apply({"params": params}, packed, None, seg).logits
  np.testing.assert_allclose(out[:, :4], lm.apply({"params": params}, a).logits, atol=1e-5)
  np.testing.assert_allclose(out[:, 4:7], lm.apply({"params": params}, b).logits, atol=1e-5)


def test_kv_cache_prefill_and_decode_equal_full_forward(lm_and_params):
  lm, params = lm_and_params
  toks = jax.random.randint(jax.random.key(4), (2, 7), 4, CFG.vocab_size)
  seg = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
  pos = jnp.cumsum(seg, axis=1) - seg
  full = lm.apply({"params": params}, toks, pos, seg).logits
  cache = models.init_cache(CFG, 2, 7)
  pre = lm.apply({"params": params}, toks[:, :4], pos[:, :4], seg[:, :4], cache=cache)
  real = np.asarray(seg[:, :4], bool)  # padding positions attend to nothing: their outputs are unspecified
  np.testing.assert_allclose(np.asarray(pre.logits)[real], np.asarray(full[:, :4])[real], atol=1e-5)
  cache = pre.cache
  for t in range(4, 7):
    step = lm.apply({"params": params}, toks[:, t:t + 1], pos[:, t:t + 1], seg[:, t:t + 1], cache=cache)
    cache = step.cache
    np.testing.assert_allclose(step.logits[:, 0], full[:, t], atol=1e-5)
  assert int(cache.end) == 7


def test_cache_longer_than_max_len_is_refused():
  with pytest.raises(ValueError, match="max_len"):
    models.init_cache(CFG, 1, CFG.max_len + 1)


def test_bfloat16_compute_with_float32_params(lm_and_params):
  _, params = lm_and_params
  lm16 = models.CausalLM(CFG.replace(compute_dtype="bfloat16"))
  toks = jax.random.randint(jax.random.key(5), (2, 8), 4, CFG.vocab_size)
  out16 = lm16.apply({"params": params}, toks)
  out32 = models.CausalLM(CFG).apply({"params": params}, toks)
  assert out16.logits.dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  np.testing.assert_allclose(np.asarray(out16.logits, np.float32), out32.logits, atol=0.05)


def test_tied_embeddings_project_with_the_embedding_table():
  cfg = CFG.replace(tie_embeddings=True)
  lm = models.CausalLM(cfg)
  params = nn.unbox(models.init_params(lm, jax.random.key(0)))
  toks = jnp.array([[5, 6, 7]])
  out = lm.apply({"params": params}, toks)
  emb = params["decoder"]["embed"]["embedding"]
  np.testing.assert_allclose(out.logits, out.hidden @ emb.T, atol=1e-5)
  np.testing.assert_array_equal(models.unembedding_matrix(params, cfg), emb.T)


def test_scalar_model_reads_last_real_token_and_copies_trunk(lm_and_params):
  _, lm_params = lm_and_params
  sm = models.ScalarModel(CFG)
  sp = nn.unbox(sm.init(jax.random.key(9), jnp.zeros((1, 4), jnp.int32))["params"])
  kernel = np.asarray(sp["head"]["kernel"])
  assert kernel.shape == (CFG.d_model, 1) and np.all(sp["head"]["bias"] == 0)
  assert abs(kernel.std() - 1 / np.sqrt(CFG.d_model + 1)) < 0.5 / np.sqrt(CFG.d_model + 1)
  sp = models.scalar_params_from_lm(lm_params, sp)
  np.testing.assert_array_equal(sp["decoder"]["embed"]["embedding"], lm_params["decoder"]["embed"]["embedding"])
  toks = jnp.array([[5, 6, 7, 0, 0], [0, 5, 6, 7, 8]])
  seg = jnp.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
  idx = models.last_real_index(seg)
  np.testing.assert_array_equal(idx, [2, 4])
  values, score = sm.apply({"params": sp}, toks, None, seg, idx)
  np.testing.assert_allclose(score, [values[0, 2], values[1, 4]])
  # The trunk's hidden state equals the LM's, so the value is the head applied to it.
  hidden = models.CausalLM(CFG).apply({"params": lm_params}, toks, None, seg).hidden
  np.testing.assert_allclose(values, hidden @ sp["head"]["kernel"][:, 0] + sp["head"]["bias"][0], atol=1e-5)
