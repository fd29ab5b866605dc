"""Tests for rlhf_jax.evaluation.best_of_n (KL of the best-of-N policy)."""
import itertools

import numpy as np
import pytest
from scipy import integrate

from rlhf_jax.evaluation import best_of_n


@pytest.mark.parametrize("n", [1, 2, 4, 16, 64])
def test_analytical_kl_matches_numerical_integral(n):
  # KL = int_0^1 q(u) log q(u) du with q(u) = n u^(n-1), the density of F(best of n).
  kl, _ = integrate.quad(lambda u: n * u ** (n - 1) * np.log(n * u ** (n - 1)) if u > 0 else 0.0, 0, 1)
  assert best_of_n.best_of_n_kl(n) == pytest.approx(kl, abs=1e-7)
  np.testing.assert_allclose(best_of_n.best_of_n_kl(np.array([1, 4])), [0.0, np.log(4) - 0.75])


def test_discrete_kl_equals_enumeration_and_is_bounded_by_formula():
  probs = np.array([0.1, 0.4, 0.2, 0.3])
  rewards = np.array([3.0, 1.0, 1.0, 0.0])  # two outcomes tie on reward
  n = 3
  bon = np.zeros(4)
  for draw in itertools.product(range(4), repeat=n):
    p = np.prod(probs[list(draw)])
    best = max(rewards[list(draw)])
    bon[next(i for i in draw if rewards[i] == best)] += p  # the first of the tied best samples
  ref = np.sum(bon * np.log(bon / probs))
  got = best_of_n.best_of_n_kl_discrete(probs, rewards, n)
  assert got == pytest.approx(ref, abs=1e-12)
  assert got < best_of_n.best_of_n_kl(n)
  # Many equally likely distinct outcomes approach the continuous formula.
  v = 10000
  fine = best_of_n.best_of_n_kl_discrete(np.full(v, 1 / v), np.arange(v), 8)
  assert fine == pytest.approx(best_of_n.best_of_n_kl(8), abs=1e-3)
  assert best_of_n.best_of_n_kl_discrete(probs, rewards, 1) == pytest.approx(0.0, abs=1e-15)


def test_errors():
  with pytest.raises(ValueError, match="positive integer"):
    best_of_n.best_of_n_kl(0)
  with pytest.raises(ValueError, match="sum to 1"):
    best_of_n.best_of_n_kl_discrete([0.5, 0.6], [0.0, 1.0], 2)
