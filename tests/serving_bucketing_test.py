"""Tests for rlhf_jax/serving/bucketing.py, including a jitted JAX reward served over HTTP."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.serving import bucketing
from rlhf_jax.serving import client as client_lib
from rlhf_jax.serving import scorer as scorer_lib
from rlhf_jax.serving import testing


def test_bucket_for_picks_the_smallest_fitting_bucket():
  assert [bucketing.bucket_for(n, (8, 2, 4)) for n in (1, 2, 3, 4, 5, 8)] == [2, 2, 4, 4, 8, 8]
  with pytest.raises(ValueError, match="sequence length 9 exceeds the largest bucket 8"):
    bucketing.bucket_for(9, (2, 8), "sequence length")


def test_pad_token_batch_pads_rows_and_columns():
  tokens_BxL, mask_BxL = bucketing.pad_token_batch([[5, 6, 7], [8]], batch_buckets=(1, 4),
                                                   length_buckets=(2, 4, 8), pad_id=0)
  np.testing.assert_array_equal(tokens_BxL, [[5, 6, 7, 0], [8, 0, 0, 0], [0] * 4, [0] * 4])
  np.testing.assert_array_equal(mask_BxL, [[1, 1, 1, 0], [1, 0, 0, 0], [0] * 4, [0] * 4])
  assert tokens_BxL.dtype == np.int32 and mask_BxL.dtype == bool


def test_jitted_reward_over_http_compiles_once_per_bucket(testdata_dir):
  tok = Tokenizer.load(testdata_dir / "tokenizer_512.model")
  emb_V = np.asarray(jax.random.normal(jax.random.key(0), (tok.vocab_size,), jnp.float32))
  shapes = set()

  @jax.jit
  def token_score(tokens_BxL, mask_BxL):
    values_BxL = jnp.where(mask_BxL, jnp.asarray(emb_V)[tokens_BxL], 0.0)
    count_B = jnp.maximum(jnp.sum(mask_BxL, axis=1), 1).astype(jnp.float32)
    return {"score": jnp.sum(values_BxL, axis=1) / count_B, "raw": jnp.sum(values_BxL, axis=1)}

  def recording(tokens_BxL, mask_BxL):
    shapes.add(tokens_BxL.shape)
    return token_score(tokens_BxL, mask_BxL)

  batch_buckets, length_buckets = (2, 8), (32, 64)
  score_fn = bucketing.bucketed_score_fn(tok, recording, batch_buckets=batch_buckets,
                                         length_buckets=length_buckets)
  rm = scorer_lib.ModelScorer("jaxrm", scorer_lib.content_version(emb_V.tobytes()), score_fn, tok,
                              max_seq_len=64, max_batch_size=8)
  rng = np.random.default_rng(0)
  words = ["good", "bad", "kettle", "very", "the", "is", "not", "I", "love", "it", "."]
  requests = []
  for _ in range(30):
    n = int(rng.integers(1, 9))
    requests.append((["Review:"] * n,
                     [" ".join(rng.choice(words, int(rng.integers(1, 25)))) for _ in range(n)]))

  def reference(prompts, responses):  # float64 NumPy: mean embedding over the real tokens
    out = []
    for p, r in zip(prompts, responses):
      ids = [tok.bos_id] + tok.encode(p) + tok.encode(r) + [tok.eos_id]
      out.append(np.mean(emb_V[ids].astype(np.float64)))
    return np.array(out)

  with testing.running_server(rm, cache_max_entries=0) as server:
    with client_lib.RewardClient(server.url, "jaxrm", batch_size=8, timeout_s=30) as client:
      for prompts, responses in requests:
        result = client.score(prompts, responses)
        np.testing.assert_allclose(result.scores, reference(prompts, responses), atol=1e-5)
        assert set(result.outputs) == {"raw"}
      with pytest.raises(client_lib.RewardServiceError, match="input_too_long.*item 0.*tokens"):
        client.score(["Review:"], ["good " * 80])
  # 30 requests of varying size and length, yet one compiled program per bucket actually hit.
  assert 2 <= len(shapes) <= len(batch_buckets) * len(length_buckets)
  assert token_score._cache_size() == len(shapes)
  assert all(b in batch_buckets and l in length_buckets for b, l in shapes)
