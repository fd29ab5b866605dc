"""Sampler tests: KV-cache decoding equals full recomputation, log-probs, EOS handling, bucketing."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import models, sampling

CFG = models.get_model_config("test")
EOS, PAD = 3, 0
PROMPTS = [[2, 17, 99, 45, 12], [2, 301], [2, 7, 8, 9, 10, 11, 12, 13, 14]]


@pytest.fixture(scope="module")
def setup(test_lm):
  lm, params = test_lm
  sampler = sampling.Sampler(lm, eos_id=EOS, pad_id=PAD)
  return lm, params, sampler


def full_logprobs(lm, params, out, temperature):
  """Log-probs of the sampled tokens by one full forward pass over prompt + response."""
  toks = jnp.concatenate([out.prompt_tokens_BxP, out.tokens_BxS], axis=1)
  seg = jnp.concatenate([out.prompt_mask_BxP, jnp.ones_like(out.tokens_BxS)], axis=1)
  pos = jnp.cumsum(seg, axis=1) - seg
  logits = lm.apply({"params": params}, toks, pos, seg).logits.astype(jnp.float32)
  P = out.prompt_tokens_BxP.shape[1]
  logp = jax.nn.log_softmax(logits[:, P - 1:-1] / temperature, axis=-1)
  return jnp.take_along_axis(logp, out.tokens_BxS[..., None], axis=-1)[..., 0], logits


def test_greedy_cache_decoding_equals_argmax_recomputation(setup):
  lm, params, sampler = setup
  cfg = sampling.SamplingConfig(max_new_tokens=8, temperature=0.0, stop_at_eos=False)
  out = sampler.generate(params, PROMPTS, jax.random.key(0), cfg)
  # Full recomputation at one fixed shape (right padding cannot affect earlier tokens under causality).
  forward = jax.jit(lambda toks, seg: lm.apply({"params": params}, toks, None, seg).logits)
  for i, prompt in enumerate(PROMPTS):
    seq = list(prompt)
    for _ in range(8):
      toks = np.zeros((1, 32), np.int32)
      toks[0, :len(seq)] = seq
      logits = forward(toks, (np.arange(32) < len(seq)).astype(np.int32)[None])
      seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    assert list(np.asarray(out.tokens_BxS[i])) == seq[len(prompt):], f"row {i}"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_returned_logprobs_equal_full_forward(setup, temperature):
  lm, params, sampler = setup
  cfg = sampling.SamplingConfig(max_new_tokens=10, temperature=temperature, num_samples=2, stop_at_eos=False)
  out = sampler.generate(params, PROMPTS, jax.random.key(1), cfg)
  assert out.tokens_BxS.shape == (6, 10)
  ref, _ = full_logprobs(lm, params, out, temperature)
  np.testing.assert_allclose(out.logprobs_BxS, ref, atol=1e-5)
  # The two samples of a prompt are different draws.
  assert not np.array_equal(out.tokens_BxS[0], out.tokens_BxS[1])


def test_eos_stops_rows_at_different_times(setup):
  _, params, sampler = setup
  free = sampler.generate(params, PROMPTS, jax.random.key(2),
                          sampling.SamplingConfig(max_new_tokens=12, temperature=0.0, stop_at_eos=False))
  free_toks = np.asarray(free.tokens_BxS)
  eos = int(free_toks[0, 3])  # make row 0's 4th token the EOS; other rows stop where it first appears, if at all
  stopper = sampling.Sampler(sampler.model, eos_id=eos, pad_id=PAD if eos != PAD else 1)
  out = stopper.generate(params, PROMPTS, jax.random.key(2),
                         sampling.SamplingConfig(max_new_tokens=12, temperature=0.0))
  toks, mask, logp = map(np.asarray, (out.tokens_BxS, out.mask_BxS, out.logprobs_BxS))
  for i in range(len(PROMPTS)):
    hits = np.flatnonzero(free_toks[i] == eos)
    n = hits[0] + 1 if hits.size else 12
    np.testing.assert_array_equal(mask[i], np.arange(12) < n)
    np.testing.assert_array_equal(toks[i, :n], free_toks[i, :n])
    assert np.all(toks[i, n:] == stopper.pad_id) and np.all(logp[i, n:] == 0)
    assert bool(out.ended_with_eos_B[i]) == bool(hits.size)
  assert int(mask[0].sum()) == 4


def test_same_bucket_does_not_recompile(setup):
  _, params, sampler = setup
  cfg = sampling.SamplingConfig(max_new_tokens=6, temperature=1.0)
  sampler.generate(params, [[2, 5, 6]], jax.random.key(0), cfg)
  sampler.generate(params, [[2, 5, 6, 7, 8, 9, 10, 11, 12, 13]], jax.random.key(1),
                   dataclasses.replace(cfg, max_new_tokens=9))  # prompt and output in the same buckets
  assert sampler.compiled(dataclasses.replace(cfg, max_new_tokens=16))._cache_size() == 1


def test_top_k_one_and_tiny_top_p_are_greedy(setup):
  _, params, sampler = setup
  greedy = sampler.generate(params, PROMPTS, jax.random.key(0),
                            sampling.SamplingConfig(max_new_tokens=5, temperature=0.0, stop_at_eos=False))
  for kw in ({"top_k": 1}, {"top_p": 1e-6}):
    out = sampler.generate(params, PROMPTS, jax.random.key(3),
                           sampling.SamplingConfig(max_new_tokens=5, temperature=1.0, stop_at_eos=False, **kw))
    np.testing.assert_array_equal(out.tokens_BxS, greedy.tokens_BxS)
    np.testing.assert_allclose(out.logprobs_BxS, 0.0, atol=1e-6)  # a one-token distribution


def test_top_p_filter_matches_numpy():
  logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32))
  for p, keep in ((0.5, 1), (0.6, 2), (0.7, 2), (0.71, 3), (0.99, 5)):
    out = np.asarray(sampling.top_p_filter(jnp.asarray(logits), p))
    assert int(np.sum(out > -1e29)) == keep, p
  out = np.asarray(sampling.top_k_filter(jnp.asarray(logits), 2))
  assert np.sum(out > -1e29) == 2 and out[0, 0] == logits[0, 0]


def test_too_long_prompt_names_the_limit(setup):
  _, params, sampler = setup
  with pytest.raises(ValueError, match="max_len"):
    sampler.generate(params, [[2] * (CFG.max_len - 3)], jax.random.key(0), sampling.SamplingConfig(max_new_tokens=8))
  with pytest.raises(ValueError, match="pad_id"):
    sampling.Sampler(sampler.model, eos_id=3, pad_id=3)
  with pytest.raises(ValueError, match="temperature"):
    sampling.SamplingConfig(temperature=-1.0).validate()
