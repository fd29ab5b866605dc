"""Tests for rlhf_jax.algorithms.best_of_n: selection, the empirical KL estimator, sampling + scoring."""
import itertools

import flax.linen as nn
import jax
import numpy as np
import pytest

from rlhf_jax import models, sampling, sharding
from rlhf_jax.algorithms import best_of_n as bon
from rlhf_jax.algorithms.reward_source import RewardError, TextRewardFn, TokenRewardFn
from rlhf_jax.data import chat
from rlhf_jax.data.schemas import Message, PromptExample
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.evaluation.best_of_n import best_of_n_kl, best_of_n_kl_discrete

CFG = models.get_model_config("test")


# Selection ------------------------------------------------------------------------------------


def _first_argmax(row):
  best = 0
  for i, v in enumerate(row):
    if v > row[best]:
      best = i
  return best


def test_select_best_breaks_ties_by_lowest_index():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 3, size=(50, 6)).astype(np.float32)  # many ties
  np.testing.assert_array_equal(bon.select_best(scores), [_first_argmax(r) for r in scores])
  np.testing.assert_array_equal(bon.select_best([[1.0, 3.0, 3.0], [0.0, 0.0, 0.0]]), [1, 0])
  np.testing.assert_array_equal(bon.select_threshold([[1.0, 3.0], [2.0, 0.5]], 2.0), [[False, True], [True, False]])
  with pytest.raises(ValueError, match="non-finite values at"):
    bon.select_best([[0.0, np.nan]])
  with pytest.raises(ValueError, match="2-D"):
    bon.select_best([1.0, 2.0])
  with pytest.raises(ValueError, match="finite"):
    bon.select_threshold([[1.0]], np.inf)


# Empirical KL ----------------------------------------------------------------------------------


def _ratio_reference(below, at, n):
  below, at = float(below), float(at)
  return np.log(n * at ** (n - 1)) if at == below else np.log((at**n - below**n) / (at - below))


def test_log_ratio_equals_reference_and_continuous_limit():
  cases = [(0.2, 0.5), (0.0, 0.3), (0.6, 0.6), (0.999, 1.0), (0.0, 1.0)]
  for n in (1, 2, 5, 16):
    got = bon.best_of_n_log_ratio([c[0] for c in cases], [c[1] for c in cases], n)
    np.testing.assert_allclose(got, [_ratio_reference(b, a, n) for b, a in cases], rtol=1e-12, atol=1e-12)
  assert bon.best_of_n_log_ratio(0.5, 0.5, 2) == pytest.approx(0.0, abs=1e-15)
  assert bon.best_of_n_log_ratio(0.0, 0.0, 3) == -np.inf
  # Large N and a small CDF stay finite: log(N F^(N-1)) = log 4096 + 4095 log 1e-3.
  assert bon.best_of_n_log_ratio(1e-3, 1e-3, 4096) == pytest.approx(np.log(4096) + 4095 * np.log(1e-3), rel=1e-12)
  with pytest.raises(ValueError, match="cdf_below <= cdf_at"):
    bon.best_of_n_log_ratio(0.6, 0.5, 2)
  with pytest.raises(ValueError, match="positive integer"):
    bon.best_of_n_log_ratio(0.1, 0.5, 0)


def _enumerate_bon(probs, rewards, n):
  """Best-of-N distribution of a categorical by enumerating all N-tuples (first best wins)."""
  q = np.zeros(len(probs))
  for draw in itertools.product(range(len(probs)), repeat=n):
    r = rewards[list(draw)]
    q[draw[int(np.argmax(r))]] += np.prod(probs[list(draw)])
  return q


@pytest.mark.parametrize("rewards", [[0.3, 2.0, -1.0, 0.9, 1.5], [1.0, 0.0, 1.0, 2.0, 0.0]])
@pytest.mark.parametrize("n", [2, 3])
def test_log_ratio_with_exact_cdf_gives_exact_discrete_kl(rewards, n):
  probs = np.array([0.1, 0.3, 0.25, 0.15, 0.2])
  rewards = np.array(rewards)
  q = _enumerate_bon(probs, rewards, n)
  below = np.array([probs[rewards < r].sum() for r in rewards])
  at = np.array([probs[rewards <= r].sum() for r in rewards])
  ratio = bon.best_of_n_log_ratio(below, at, n)
  np.testing.assert_allclose(np.exp(ratio), q / probs, rtol=1e-12)
  kl = float(np.sum(q * ratio))
  assert kl == pytest.approx(float(np.sum(q * np.log(q / probs))), abs=1e-12)
  assert kl == pytest.approx(best_of_n_kl_discrete(probs, rewards, n), abs=1e-12)


def test_estimator_small_cases_by_hand():
  # Pool [1, 2, 3] plus the selected 2: F_< = 1/4, F_<= = 3/4, ratio = 3/4 + 1/4 = 1 for N = 2.
  assert bon.empirical_best_of_n_kl([2.0], [1.0, 2.0, 3.0], 2).kl == pytest.approx(0.0, abs=1e-15)
  per_row = bon.empirical_best_of_n_kl([2.0, 3.0], [[1.0, 2.0, 3.0], [1.0, 2.0, 9.0]], 2,
                                       pool_mask_BxM=[[1, 1, 1], [1, 1, 0]])
  # Row 1: pool [1, 2] + selected 3: F_< = 2/3, F_<= = 1, ratio = 5/3.
  np.testing.assert_allclose(per_row.log_ratio_B, [0.0, np.log(5 / 3)], rtol=1e-12, atol=1e-15)
  # Without counting the selected sample: plain empirical CDF, F_< = 1/3, F_<= = 2/3.
  plain = bon.empirical_best_of_n_kl([2.0], [1.0, 2.0, 3.0], 2, include_selected=False)
  assert plain.kl == pytest.approx(np.log(1.0), abs=1e-15)
  with pytest.raises(ValueError, match="below every pool score"):
    bon.empirical_best_of_n_kl([0.0], [1.0, 2.0], 2, include_selected=False)
  with pytest.raises(ValueError, match="empty pool"):
    bon.empirical_best_of_n_kl([0.0], [[1.0]], 2, pool_mask_BxM=[[0]])
  with pytest.raises(ValueError, match="must be"):
    bon.empirical_best_of_n_kl([0.0, 1.0], np.zeros((3, 2)), 2)


def _draw_best_of_n(rng, probs, rewards, n, t):
  draws = rng.choice(len(probs), size=(t, n), p=probs)
  r = rewards[draws]
  return r, r[np.arange(t), np.argmax(r, axis=1)]


@pytest.mark.parametrize("ties", [False, True])
def test_empirical_kl_matches_exact_discrete_kl(ties):
  rng = np.random.default_rng(1)
  k, n, t, m = 8, 4, 4000, 20000
  probs = rng.dirichlet(np.ones(k))
  rewards = np.floor(np.arange(k) / 2) if ties else rng.normal(size=k)
  _, selected = _draw_best_of_n(rng, probs, rewards, n, t)
  pool = rewards[rng.choice(k, size=m, p=probs)]
  est = bon.empirical_best_of_n_kl(selected, pool, n)
  exact = best_of_n_kl_discrete(probs, rewards, n)
  assert abs(est.kl - exact) < 4 * est.stderr + 2 * (n - 1) / (2 * m)
  assert exact < best_of_n_kl(n) - 0.05  # few atoms: well below the continuous formula


def test_empirical_kl_approaches_formula_for_many_outcomes():
  rng = np.random.default_rng(2)
  k, n, t, m = 5000, 4, 4000, 40000
  probs = rng.dirichlet(np.full(k, 100.0))
  rewards = rng.permutation(k).astype(np.float64)
  exact = best_of_n_kl_discrete(probs, rewards, n)
  assert exact == pytest.approx(best_of_n_kl(n), abs=2e-3)
  _, selected = _draw_best_of_n(rng, probs, rewards, n, t)
  est = bon.empirical_best_of_n_kl(selected, rewards[rng.choice(k, size=m, p=probs)], n)
  assert abs(est.kl - best_of_n_kl(n)) < 4 * est.stderr + (n - 1) / m + 2e-3
  assert abs(est.kl - exact) < 4 * est.stderr + (n - 1) / m


def test_leave_one_out_pool_for_a_repeated_prompt():
  rng = np.random.default_rng(3)
  k, n, t = 6, 3, 400
  probs = rng.dirichlet(np.ones(k))
  rewards = rng.normal(size=k)
  scores, selected = _draw_best_of_n(rng, probs, rewards, n, t)
  pool, mask = bon.leave_one_out_pool(scores)
  assert pool.shape == mask.shape == (t, t * n)
  np.testing.assert_array_equal(mask[1, n:2 * n], 0.0)  # row 1's own samples are out of its pool
  assert mask[1].sum() == (t - 1) * n and pool[1, 0] == scores[0, 0] and pool[0, n + 2] == scores[1, 2]
  est = bon.empirical_best_of_n_kl(selected, pool, n, pool_mask_BxM=mask)
  exact = best_of_n_kl_discrete(probs, rewards, n)
  assert abs(est.kl - exact) < 4 * est.stderr + (n - 1) / ((t - 1) * n)


# Sampling with the tiny transformer --------------------------------------------------------------


def count_e(prompts, responses):
  del prompts
  return np.array([r.count("e") for r in responses], np.float32)


REWARD = TextRewardFn(count_e, name="count_e")
PROMPTS = ["Write a review of the kettle.", (Message("user", "Hello there"),),
           PromptExample(prompt="What is two plus two?", id="arith-7")]


@pytest.fixture(scope="module")
def setup(testdata_dir):
  tok = Tokenizer.load(testdata_dir / "tokenizer_512.model")
  lm = models.CausalLM(CFG)
  # Jitted init: eager flax init costs seconds; compiled, it hits the persistent compile cache.
  params = nn.unbox(jax.jit(lambda k: models.init_params(lm, k))(jax.random.key(0)))
  sampler = sampling.Sampler(lm, eos_id=tok.eos_id, pad_id=tok.pad_id)
  return tok, lm, params, sampler


def test_best_is_argmax_and_every_field_agrees_with_the_sampler(setup):
  tok, _, params, sampler = setup
  n, m = 4, 4
  cfg = sampling.SamplingConfig(max_new_tokens=8, temperature=1.0, num_samples=n)
  key = jax.random.key(7)
  res = bon.best_of_n(sampler, params, PROMPTS, key, cfg, tokenizer=tok, reward=REWARD, num_heldout=m,
                      policy_id="policy-test")
  b = len(PROMPTS)
  assert res.scores_BxN.shape == (b, n) and res.tokens_BxNxS.shape == (b, n, 8)
  assert res.heldout_scores_BxM.shape == (b, m) and res.num_samples == n
  assert res.prompt_ids[2] == "arith-7" and res.prompt_ids[0].startswith("p-")
  assert res.prompts[1] == (Message("user", "Hello there"),)

  # Independent re-run of the sampler: rows are prompt-major, first N candidates then M held out.
  prompt_ids = [chat.render_prompt(tok, p.prompt if isinstance(p, PromptExample) else p) for p in PROMPTS]
  raw = sampler.generate(params, prompt_ids, key, sampling.SamplingConfig(max_new_tokens=8, num_samples=n + m))
  texts = [t[1:] if t.startswith(" ") else t for t in tok.decode_batch(np.asarray(raw.tokens_BxS))]
  counts = np.array([t.count("e") for t in texts], np.float32).reshape(b, n + m)
  np.testing.assert_array_equal(res.scores_BxN, counts[:, :n])
  np.testing.assert_array_equal(res.heldout_scores_BxM, counts[:, n:])
  assert [list(r) for r in res.responses] == [texts[i * (n + m):i * (n + m) + n] for i in range(b)]
  lp = np.asarray(raw.logprobs_BxS, np.float64).reshape(b, n + m, 8).sum(axis=2)
  np.testing.assert_allclose(res.logprobs_BxN, lp[:, :n], rtol=1e-6)

  np.testing.assert_array_equal(res.best_index_B, [_first_argmax(r) for r in counts[:, :n]])
  for i in range(b):
    j = int(res.best_index_B[i])
    assert res.best_texts[i] == res.responses[i][j]
    row = np.asarray(raw.tokens_BxS)[i * (n + m) + j]
    np.testing.assert_array_equal(res.best_tokens[i], row[np.asarray(raw.mask_BxS)[i * (n + m) + j] == 1])
    assert res.best_scores_B[i] == counts[i, :n].max()

  mt = res.metrics
  assert mt["best_of_n/kl_analytic"] == pytest.approx(np.log(4) - 0.75)
  assert mt["best_of_n/best_score_mean"] == pytest.approx(counts[:, :n].max(axis=1).mean())
  assert mt["best_of_n/score_mean"] == pytest.approx(counts[:, :n].mean())
  est = bon.empirical_best_of_n_kl(res.best_scores_B, counts[:, n:], n)
  assert mt["best_of_n/kl_empirical"] == pytest.approx(est.kl)
  assert np.isfinite(mt["best_of_n/kl_empirical"])
  assert mt["best_of_n/response_length_mean"] == pytest.approx(float(np.asarray(raw.lengths_B).mean()))
  assert res.above_threshold(float(counts[:, :n].max())) == [
      (i, j) for i in range(b) for j in range(n) if counts[i, j] >= counts[:, :n].max()]

  # A token-level reward sees the response ids and masks of the same rows.
  lengths = TokenRewardFn(lambda pt, pm, rt, rm: rm.sum(axis=1), name="length")
  res_len = bon.best_of_n(sampler, params, PROMPTS, key, cfg, tokenizer=tok, reward=lengths, num_heldout=m)
  np.testing.assert_array_equal(res_len.scores_BxN, res.mask_BxNxS.sum(axis=2))
  assert res_len.reward_name == "length" and res_len.policy_id is None


def test_mean_best_score_grows_with_n(setup):
  tok, _, params, sampler = setup
  prompts = [f"Prompt number {i}: describe the weather." for i in range(6)]
  means = []
  for n in (1, 4, 16):
    cfg = sampling.SamplingConfig(max_new_tokens=8, temperature=1.0, num_samples=n)
    res = bon.best_of_n(sampler, params, prompts, jax.random.key(11), cfg, tokenizer=tok, reward=REWARD)
    assert np.all(res.best_scores_B == res.scores_BxN.max(axis=1))
    means.append(res.metrics["best_of_n/best_score_mean"])
    assert res.metrics["best_of_n/kl_analytic"] == pytest.approx(best_of_n_kl(n))
  assert means[0] < means[1] < means[2], means


def test_sharded_best_of_n_equals_single_device(setup):
  tok, lm, _, _ = setup
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  lm_sharded = models.CausalLM(CFG, mesh=mesh, rules=sharding.DEFAULT_RULES)
  params, _ = sharding.init_sharded(lambda k: models.init_params(lm_sharded, k), mesh, sharding.DEFAULT_RULES,
                                    jax.random.key(3))
  assert len(params["lm_head"]["kernel"].sharding.device_set) == 8
  cfg = sampling.SamplingConfig(max_new_tokens=8, temperature=0.8, top_k=50, num_samples=4)
  args = dict(tokenizer=tok, reward=REWARD, num_heldout=4)
  single = bon.best_of_n(sampling.Sampler(lm, eos_id=3, pad_id=0), jax.device_get(params), PROMPTS,
                         jax.random.key(5), cfg, **args)
  sharded = bon.best_of_n(sampling.Sampler(lm_sharded, eos_id=3, pad_id=0), params, PROMPTS,
                          jax.random.key(5), cfg, **args)
  np.testing.assert_array_equal(sharded.tokens_BxNxS, single.tokens_BxNxS)
  np.testing.assert_array_equal(sharded.scores_BxN, single.scores_BxN)
  np.testing.assert_array_equal(sharded.best_index_B, single.best_index_B)
  assert sharded.responses == single.responses
  np.testing.assert_allclose(sharded.logprobs_BxN, single.logprobs_BxN, atol=1e-4)
  assert sharded.metrics["best_of_n/kl_empirical"] == pytest.approx(single.metrics["best_of_n/kl_empirical"])


def test_bad_input_is_a_clear_error(setup):
  tok, lm, params, sampler = setup
  cfg = sampling.SamplingConfig(max_new_tokens=8, num_samples=4)
  with pytest.raises(ValueError, match="disagree on special ids"):
    bon.best_of_n(sampling.Sampler(lm, eos_id=5, pad_id=0), params, PROMPTS, jax.random.key(0), cfg,
                  tokenizer=tok, reward=REWARD)
  with pytest.raises(ValueError, match="greedy"):
    bon.best_of_n(sampler, params, PROMPTS, jax.random.key(0), sampling.SamplingConfig(temperature=0.0, num_samples=2),
                  tokenizer=tok, reward=REWARD)
  with pytest.raises(ValueError, match="at least one prompt"):
    bon.best_of_n(sampler, params, [], jax.random.key(0), cfg, tokenizer=tok, reward=REWARD)
  with pytest.raises(ValueError, match="3 prompts but 1 prompt_tokens"):
    bon.best_of_n(sampler, params, PROMPTS, jax.random.key(0), cfg, tokenizer=tok, reward=REWARD,
                  prompt_tokens=[[2, 5]])
  with pytest.raises(ValueError, match="num_heldout"):
    bon.best_of_n(sampler, params, PROMPTS, jax.random.key(0), cfg, tokenizer=tok, reward=REWARD, num_heldout=-1)
  with pytest.raises(ValueError, match=r"field 'prompts\[1\]': expected str or list of messages, got int"):
    bon.best_of_n(sampler, params, ["ok", 3], jax.random.key(0), cfg, tokenizer=tok, reward=REWARD)
  nan_reward = TextRewardFn(lambda p, r: np.full(len(r), np.nan), name="broken")
  with pytest.raises(RewardError, match="'broken' returned non-finite scores"):
    bon.best_of_n(sampler, params, PROMPTS, jax.random.key(7), cfg, tokenizer=tok, reward=nan_reward,
                  num_heldout=4)
