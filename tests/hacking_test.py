"""Tests for rlhf_jax.evaluation.hacking."""
import numpy as np
import pytest
from scipy import stats

from rlhf_jax.evaluation import hacking


def test_lengths_repetition_and_distinct_by_hand():
  texts = ["the cat the cat", "a b c", "", "x"]
  np.testing.assert_array_equal(hacking.response_lengths(texts), [4, 3, 0, 1])
  np.testing.assert_allclose(hacking.repetition_rate(texts, n=2), [1 - 2 / 3, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(hacking.repetition_rate(texts, n=1), [0.5, 0.0, 0.0, 0.0])
  # Unigrams over the corpus: the, cat, the, cat, a, b, c, x -> 6 distinct of 8.
  assert hacking.distinct_n(texts, 1) == pytest.approx(6 / 8)
  # Bigrams: (the cat) (cat the) (the cat) (a b) (b c) -> 4 distinct of 5.
  assert hacking.distinct_n(texts, 2) == pytest.approx(4 / 5)
  assert np.isnan(hacking.distinct_n(["a"], 2))


def test_token_id_sequences_work_like_words():
  ids = [[5, 6, 5, 6, 5], [1, 2]]
  words = ["5 6 5 6 5", "1 2"]
  np.testing.assert_allclose(hacking.repetition_rate(ids, 2), hacking.repetition_rate(words, 2))
  assert hacking.distinct_n(ids, 2) == pytest.approx(3 / 5)


def test_hacking_signals_correlate_with_reward():
  rng = np.random.default_rng(0)
  lengths = rng.integers(1, 30, size=40)
  responses = [" ".join(rng.choice(["a", "b", "c", "d", "e", "f"], size=n)) for n in lengths]
  rewards = 0.1 * lengths + rng.normal(size=40)
  out = hacking.hacking_signals(responses, rewards, ngram_sizes=(1, 3))
  assert set(out) == {"length/mean", "length/spearman_reward", "length/pearson_reward",
                      "repetition_1/mean", "repetition_1/spearman_reward", "repetition_1/pearson_reward",
                      "repetition_3/mean", "repetition_3/spearman_reward", "repetition_3/pearson_reward",
                      "distinct_1", "distinct_3"}
  assert out["length/spearman_reward"] == pytest.approx(stats.spearmanr(lengths, rewards)[0], abs=1e-12)
  assert out["length/pearson_reward"] == pytest.approx(stats.pearsonr(lengths, rewards)[0], abs=1e-12)
  rep1 = hacking.repetition_rate(responses, 1)
  assert out["repetition_1/spearman_reward"] == pytest.approx(stats.spearmanr(rep1, rewards)[0], abs=1e-12)
  assert out["length/spearman_reward"] > 0.5  # the planted length hack is visible
  assert out["distinct_1"] == pytest.approx(6 / lengths.sum())
  with pytest.raises(ValueError, match="rewards_B has 2 entries"):
    hacking.hacking_signals(responses, [1.0, 2.0])
