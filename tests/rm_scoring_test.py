"""Tests for rlhf_jax.algorithms.rm_scoring: bucketed scoring, token path, normalisation,
calibration, persistence and the serving protocol."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import models
from rlhf_jax.algorithms import ensemble, reward_source, rm_scoring
from rlhf_jax.checkpointing import registry
from rlhf_jax.data import batching, chat
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.evaluation import reward_model_eval

CFG = models.get_model_config("test", vocab_size=512)
BUCKETS = rm_scoring.Buckets(batch_sizes=(2, 4), lengths=(32, 64))
PROMPTS = ["Review of the lamp:", "What do you think of the kettle?", "Hi", "Tell me a story."]
RESPONSES = ["A bright and sturdy lamp.", "It boils fast.", "Hello there!", "Once upon a time."]


@pytest.fixture(scope="module")
def tokenizer(testdata_dir):
  return Tokenizer.load(testdata_dir / "tokenizer_512.model")


_INIT = jax.jit(lambda k: nn.unbox(models.init_params(models.ScalarModel(CFG), k)))


def _params(key=0):
  params = _INIT(jax.random.key(key))
  params["head"]["kernel"] = params["head"]["kernel"] * 10.0  # spread the scores out
  return params


@pytest.fixture(scope="module")
def scorer(tokenizer):
  return rm_scoring.RewardModelScorer(_params(), CFG, tokenizer, buckets=BUCKETS, name="rm")


_APPLY = jax.jit(models.ScalarModel(CFG).apply)  # one compilation for every direct forward


def _direct_scores(params, tokenizer, prompts, responses):
  """Independent path: a plain causal forward without segment ids over rows right-padded to 96
  (padding after a token cannot change a causal model's value there), read at each last token."""
  rows = [chat.render(tokenizer, p, r).ids for p, r in zip(prompts, responses)]
  tokens = np.zeros((len(rows), 96), np.int32)
  for b, ids in enumerate(rows):
    tokens[b, :len(ids)] = ids
  values_BxL, _ = _APPLY({"params": params}, jnp.asarray(tokens))
  return np.asarray(values_BxL)[np.arange(len(rows)), [len(ids) - 1 for ids in rows]]


def test_scores_equal_a_direct_forward_and_buckets_bound_compilation(scorer, tokenizer):
  out = scorer.score(PROMPTS[:3], RESPONSES[:3])
  assert set(out) == {"score", "raw", "normalized"}  # no "std" for a single model
  want = _direct_scores(scorer.params, tokenizer, PROMPTS[:3], RESPONSES[:3])
  np.testing.assert_allclose(out["raw"], want, atol=1e-5)
  np.testing.assert_array_equal(out["score"], out["raw"])  # no normalisation: score is raw
  # Row order and batch composition do not change a row's score.
  again = scorer.score(PROMPTS[:3][::-1], RESPONSES[:3][::-1])
  np.testing.assert_allclose(again["raw"], out["raw"][::-1], atol=1e-6)
  # One program per (batch bucket, length bucket) pair ever used, however many calls.
  first = [scorer.render(p, r) for p, r in zip(PROMPTS[:3], RESPONSES[:3])]
  used = {(4, batching.pick_bucket(max(map(len, first)), BUCKETS.lengths))}
  for n, prompt in [(1, "Hi"), (2, "Hi"), (3, "Hi"), (4, "Hi"), (3, "word " * 8), (1, "Hi"),
                    (2, "word " * 8), (4, "word " * 8), (1, "word " * 8), (3, "Hi")]:
    rows = [scorer.render(prompt, r) for r in RESPONSES[:n]]
    used.add((batching.pick_bucket(n, BUCKETS.batch_sizes),
              batching.pick_bucket(max(map(len, rows)), BUCKETS.lengths)))
    scorer.score([prompt] * n, RESPONSES[:n])
    assert scorer.compiled_programs() == len(used)
  assert {length for _, length in used} == {32, 64}
  nine = scorer.score(PROMPTS * 2 + PROMPTS[:1], RESPONSES * 2 + RESPONSES[:1])
  np.testing.assert_allclose(nine["raw"][4:8], nine["raw"][:4], atol=1e-6)
  assert scorer.compiled_programs() <= len(BUCKETS.batch_sizes) * len(BUCKETS.lengths)


def test_token_path_matches_the_text_path(scorer, tokenizer):
  """Left-padded prompts and right-padded responses (the sampler's layout) score like texts."""
  prompts = [chat.render_prompt(tokenizer, p) for p in PROMPTS]
  responses = [chat.render(tokenizer, p, r).ids[len(q):] for p, r, q in zip(PROMPTS, RESPONSES,
                                                                          prompts)]
  pb = batching.pad_prompts(prompts, buckets=(24,), pad_id=tokenizer.pad_id)
  s = max(len(r) for r in responses) + 3
  resp_BxS = np.zeros((len(responses), s), np.int32)
  mask_BxS = np.zeros((len(responses), s), np.int32)
  for b, r in enumerate(responses):
    resp_BxS[b, :len(r)] = r
    mask_BxS[b, :len(r)] = 1
  resp_BxS[0, len(responses[0]):] = 7  # garbage after the mask must be ignored
  got = scorer.score_tokens(pb.tokens_BxP, pb.mask_BxP, resp_BxS, mask_BxS)
  np.testing.assert_array_equal(got, scorer.score(PROMPTS, RESPONSES)["score"])
  fn = scorer.token_reward_fn()
  batch = reward_source.ScoringBatch(PROMPTS, RESPONSES, pb.tokens_BxP, pb.mask_BxP, resp_BxS,
                                     mask_BxS)
  np.testing.assert_array_equal(fn(batch), got)
  with pytest.raises(ValueError, match="no real tokens"):
    scorer.score_tokens(pb.tokens_BxP, 0 * pb.mask_BxP, resp_BxS, 0 * mask_BxS)


def test_normalisation_gives_mean_zero_std_one_on_reference_samples(tokenizer):
  rng = np.random.default_rng(0)
  words = ["good", "bad", "lamp", "quite", "fast", "slow", "the", "is"]
  responses = [" ".join(rng.choice(words, size=int(rng.integers(1, 8)))) for _ in range(24)]
  prompts = [PROMPTS[i % len(PROMPTS)] for i in range(24)]
  base = rm_scoring.RewardModelScorer(_params(), CFG, tokenizer, buckets=BUCKETS)
  raw = base.score(prompts, responses)["raw"]
  norm = rm_scoring.fit_normalisation(raw)
  np.testing.assert_allclose([norm.gain, norm.bias], [1 / raw.astype(np.float64).std(),
                                                      -raw.mean() / raw.astype(np.float64).std()],
                             rtol=1e-6)
  scorer = rm_scoring.RewardModelScorer(base.params, CFG, tokenizer, buckets=BUCKETS,
                                        normalisation=norm)
  out = scorer.score(prompts, responses)
  np.testing.assert_allclose(out["normalized"].mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(out["normalized"].std(), 1.0, atol=1e-5)
  np.testing.assert_array_equal(out["score"], out["normalized"])
  np.testing.assert_allclose(out["raw"], raw, atol=1e-6)
  with pytest.raises(ValueError, match="constant"):
    rm_scoring.fit_normalisation([1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match="gain"):
    rm_scoring.Normalisation.from_dict({"gain": 0.0, "bias": 1.0})


def test_ensemble_scorer_reports_member_mean_and_std(tokenizer):
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[_params(k) for k in range(3)])
  norm = rm_scoring.Normalisation(gain=2.0, bias=-1.0)
  scorer = rm_scoring.RewardModelScorer(stacked, CFG, tokenizer, buckets=BUCKETS,
                                        normalisation=norm)
  assert scorer.num_members == 3
  out = scorer.score(PROMPTS, RESPONSES)
  members = np.stack([_direct_scores(ensemble.member(stacked, m), tokenizer, PROMPTS, RESPONSES)
                      for m in range(3)])
  np.testing.assert_allclose(out["raw"], members.mean(axis=0), atol=1e-5)
  np.testing.assert_allclose(out["std"], 2.0 * members.std(axis=0), atol=1e-5)  # in score units
  np.testing.assert_allclose(out["score"], 2.0 * members.mean(axis=0) - 1.0, atol=1e-5)


def test_calibrated_preference_probability_and_spec_round_trip(scorer, tokenizer, tmp_path):
  rng = np.random.default_rng(1)
  r_c, r_r = rng.normal(1.0, 1.0, 40), rng.normal(0.0, 1.0, 40)
  for kind in ("platt", "isotonic"):
    cal = reward_model_eval.fit_pairwise_calibration(r_c, r_r, kind)
    with_cal = rm_scoring.RewardModelScorer(scorer.params, CFG, tokenizer, buckets=BUCKETS,
                                            calibration=cal, name="rm", version="rm@test",
                                            normalisation=rm_scoring.Normalisation(0.5, 0.1))
    p = with_cal.preference_probability(PROMPTS, RESPONSES, RESPONSES[::-1])
    raw_a = scorer.score(PROMPTS, RESPONSES)["raw"].astype(np.float64)
    raw_b = scorer.score(PROMPTS, RESPONSES[::-1])["raw"].astype(np.float64)
    np.testing.assert_allclose(p, cal(raw_a - raw_b), atol=1e-6)
    # Spec JSON round trip: same map, normalisation, buckets and scores.
    path = rm_scoring.save_spec(with_cal.spec(), tmp_path / f"{kind}.json")
    loaded = rm_scoring.scorer_from_spec(rm_scoring.load_spec(path), scorer.params, tokenizer)
    assert loaded.version == "rm@test" and loaded.buckets == BUCKETS
    assert loaded.calibration == cal and loaded.normalisation == with_cal.normalisation
    np.testing.assert_allclose(loaded.preference_probability(PROMPTS, RESPONSES, RESPONSES[::-1]),
                               p, atol=1e-12)
  uncalibrated = scorer.preference_probability(PROMPTS[:1], RESPONSES[:1], RESPONSES[:1])
  np.testing.assert_allclose(uncalibrated, [0.5], atol=1e-7)  # sigmoid(0) for identical responses


def test_load_from_export_and_serving_protocol(scorer, tokenizer, testdata_dir, tmp_path):
  from rlhf_jax.serving import scorer as serving_scorer  # pylint: disable=g-import-not-at-top
  params_path = tmp_path / "export" / "rm"
  registry.export_params(params_path, scorer.params)
  spec = scorer.spec()
  spec["tokenizer_path"] = str(testdata_dir / "tokenizer_512.model")
  rm_scoring.save_spec(spec, rm_scoring.spec_path(params_path))
  loaded = rm_scoring.load_scorer_from_export(params_path)
  np.testing.assert_array_equal(loaded.score(PROMPTS, RESPONSES)["score"],
                                scorer.score(PROMPTS, RESPONSES)["score"])
  assert isinstance(loaded, serving_scorer.Scorer)
  assert (loaded.name, loaded.version) == ("rm", scorer.version)
  assert (loaded.max_batch_size, loaded.max_seq_len) == (4, 64)
  checked = serving_scorer.check_outputs(loaded.score_batch(PROMPTS[:2], RESPONSES[:2]), 2)
  assert set(checked) == {"score", "raw", "normalized"}
  loaded.validate(PROMPTS[0], RESPONSES[0])
  with pytest.raises(serving_scorer.InputTooLongError, match="max_seq_len of 64"):
    loaded.validate("word " * 80, "x")
  with pytest.raises(ValueError, match="must be a string"):
    loaded.validate(3, "x")
  with pytest.raises(ValueError, match="exceeds max_batch_size"):
    loaded.score_batch(PROMPTS + PROMPTS[:1], RESPONSES + RESPONSES[:1])
  with pytest.raises(FileNotFoundError, match="no reward-model spec"):
    rm_scoring.load_spec(tmp_path / "missing.json")
