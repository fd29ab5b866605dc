"""KL-to-reference estimate on policy samples: log-probs against NumPy, identities, unbiasedness."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from rlhf_jax import models, sampling
from rlhf_jax.algorithms import reference_kl
from rlhf_jax.data import batching

CFG = models.get_model_config("test")
PROMPTS = [[2, 17, 99, 45], [2, 301], [2, 7, 8, 9, 10], [2, 44]]
NUM_SAMPLES = 64
SAMPLING = sampling.SamplingConfig(max_new_tokens=4, temperature=1.0, num_samples=NUM_SAMPLES)


@pytest.fixture(scope="module")
def setup():
  lm = models.CausalLM(CFG)
  init = jax.jit(lambda key: nn.unbox(models.init_params(lm, key)))
  policy, ref = init(jax.random.key(0)), init(jax.random.key(1))
  # Scale the reference's output layer so the two models differ clearly.
  ref = {**ref, "lm_head": {"kernel": 3.0 * ref["lm_head"]["kernel"]}}
  prompts = batching.pad_prompts(PROMPTS, buckets=(8,), pad_id=0)
  kl_fn = reference_kl.make_kl_eval(lm, SAMPLING, eos_id=3, pad_id=0)
  out = jax.device_get(kl_fn(policy, ref, prompts.tokens_BxP, prompts.mask_BxP,
                             jax.random.key(5)))
  logits_fn = jax.jit(lambda p, t, s: lm.apply({"params": p}, t, None, s).logits)
  return {"lm": lm, "policy": policy, "ref": ref, "prompts": prompts, "kl_fn": kl_fn, "out": out,
          "logits_fn": logits_fn}


def _np_logits(setup, params, row):
  """Float64 logits of one [prompt | response] row, recomputed from the unpadded tokens."""
  samples = setup["out"].samples
  prompt = samples.prompt_tokens_BxP[row][samples.prompt_mask_BxP[row] == 1]
  response = samples.tokens_BxS[row][samples.mask_BxS[row] == 1]
  tokens = np.concatenate([prompt, response])[None]
  logits = setup["logits_fn"](params, tokens, np.ones_like(tokens))
  return np.asarray(logits, np.float64)[0], len(prompt), response


def _np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_log_probs_and_estimators_equal_numpy_per_row(setup):
  out = setup["out"]
  assert out.samples.tokens_BxS.shape == (len(PROMPTS) * NUM_SAMPLES, 4)
  np.testing.assert_allclose(out.logp_BxS, out.samples.logprobs_BxS, atol=2e-5)  # sampler agrees
  for row in (0, 70, 255):
    pol, p_len, response = _np_logits(setup, setup["policy"], row)
    ref, _, _ = _np_logits(setup, setup["ref"], row)
    lp, lq = _np_log_softmax(pol), _np_log_softmax(ref)
    positions = np.arange(p_len - 1, p_len - 1 + len(response))
    logp = lp[positions, response]
    ref_logp = lq[positions, response]
    np.testing.assert_allclose(out.logp_BxS[row, :len(response)], logp, atol=2e-5)
    np.testing.assert_allclose(out.ref_logp_BxS[row, :len(response)], ref_logp, atol=2e-5)
    r = ref_logp - logp
    np.testing.assert_allclose(out.kl_B["k1"][row], np.sum(logp - ref_logp), atol=1e-4)
    np.testing.assert_allclose(out.kl_B["k3"][row], np.sum(np.expm1(r) - r), atol=1e-4)
    full = np.sum(np.exp(lp[positions]) * (lp[positions] - lq[positions]))
    np.testing.assert_allclose(out.kl_B["full"][row], full, rtol=1e-4)
  np.testing.assert_allclose(out.metrics["kl/k3"], np.mean(out.kl_B["k3"]), rtol=1e-6)
  np.testing.assert_allclose(out.metrics["kl/response_length"], out.samples.mask_BxS.sum() / 256)


def test_estimators_agree_in_expectation(setup):
  """k1, k3 and the exact per-position KL estimate the same sequence KL (to sampling error)."""
  kl = {k: np.asarray(v, np.float64) for k, v in setup["out"].kl_B.items()}
  assert kl["full"].mean() > 0.1  # the models differ
  assert np.all(kl["k3"] >= 0) and np.all(kl["full"] >= 0)
  for name in ("k1", "k3"):
    diff = kl[name] - kl["full"]
    stderr = diff.std(ddof=1) / np.sqrt(len(diff))
    assert abs(diff.mean()) < 4 * stderr + 1e-6, (name, diff.mean(), stderr)


def test_policy_equal_to_reference_gives_zero(setup):
  p = setup["prompts"]
  out = setup["kl_fn"](setup["policy"], setup["policy"], p.tokens_BxP, p.mask_BxP,
                       jax.random.key(0))
  for name in ("kl/k1", "kl/k3", "kl/full"):
    assert float(out.metrics[name]) == pytest.approx(0.0, abs=1e-6), name


@pytest.mark.parametrize("kw", [{"temperature": 0.7}, {"top_k": 5}, {"top_p": 0.9}])
def test_sampling_must_come_from_the_policy(kw):
  with pytest.raises(ValueError, match="samples from the policy itself"):
    reference_kl.validate_sampling(sampling.SamplingConfig(**kw))
