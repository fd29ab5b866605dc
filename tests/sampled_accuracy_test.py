"""Tests for rlhf_jax.evaluation.sampled_accuracy against exhaustive enumeration."""
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from rlhf_jax.evaluation import sampled_accuracy as sa


def test_pass_at_k_equals_enumeration_of_subsets():
  ns, cs, ks, expected = [], [], [], []
  for n in range(1, 8):
    for c in range(n + 1):
      samples = [True] * c + [False] * (n - c)
      for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        expected.append(sum(any(samples[i] for i in s) for s in subsets) / len(subsets))
        ns.append(n), cs.append(c), ks.append(k)
  got = [sa.pass_at_k([n], [c], k)[0] for n, c, k in zip(ns, cs, ks)]
  np.testing.assert_allclose(got, expected, atol=1e-12)
  assert sa.pass_at_k(5, 1, 2)[0] == pytest.approx(0.4)
  np.testing.assert_allclose(sa.pass_at_k([5, 5, 3], [0, 5, 1], 1), [0.0, 1.0, 1 / 3])


def test_pass_at_k_is_stable_for_large_n():
  n, c, k = 500, 7, 200
  exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
  assert sa.pass_at_k([n], [c], k)[0] == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("args, message", [
    (([3], [4], 1), "problem 0: need integers 0 <= num_correct <= num_samples"),
    (([3, 2], [1, 1], 3), "problem 1: pass@3 needs at least k samples"),
    (([3], [1], 0), "k must be >= 1"),
])
def test_pass_at_k_errors(args, message):
  with pytest.raises(ValueError, match=message):
    sa.pass_at_k(*args)


def test_expected_best_of_k_equals_enumeration():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(5, 6)).astype(float)  # ties in scores
  values = rng.normal(size=(5, 6))
  for k in range(1, 7):
    ref = [np.mean([values[b, max(s, key=lambda i: (scores[b, i], -i))]
                    for s in itertools.combinations(range(6), k)]) for b in range(5)]
    np.testing.assert_allclose(sa.expected_best_of_k(scores, values, k), ref, atol=1e-12)


def test_best_at_n_uses_argmax_with_first_index_on_ties():
  scores = np.array([[0.1, 0.9, 0.9], [0.5, 0.2, 0.1], [0.3, 0.3, 0.3]])
  correct = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1]])
  assert sa.best_at_n(scores, correct) == pytest.approx(np.mean(correct[np.arange(3), scores.argmax(1)]))
  assert sa.best_at_n(scores, correct) == pytest.approx(1 / 3)


def test_majority_at_n_ties_and_missing_answers():
  answers = [["4", "5", "4"], ["1", "2", "2", "1"], [None, None], [None, "7", "8", "8"], ["3"]]
  res = sa.majority_at_n(answers, ["4", "2", "0", "8", "9"])
  assert res.answer_B == ["4", "1", None, "8", "3"]  # "1" appears before "2": tie goes to "1"
  np.testing.assert_array_equal(res.correct_B, [True, False, False, True, False])
  assert res.num_tied == 1 and res.accuracy == pytest.approx(0.4)
  with pytest.raises(ValueError, match="references_B has 1"):
    sa.majority_at_n([["1"], ["2"]], ["1"])
