"""Tests for rlhf_jax.evaluation.ratings (Elo and Bradley-Terry)."""
import numpy as np
import pytest
from scipy import optimize

from rlhf_jax.evaluation import ratings

TRUE_THETA = np.array([0.0, 0.6, -0.4, 1.2, -1.0])


def _simulate(seed, num_games, theta=TRUE_THETA, tie_prob=0.0):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, theta.size, size=num_games)
  b = (a + rng.integers(1, theta.size, size=num_games)) % theta.size
  a_wins = rng.random(num_games) < 1 / (1 + np.exp(-(theta[a] - theta[b])))
  outcome = np.where(a_wins, 1.0, 0.0)
  outcome = np.where(rng.random(num_games) < tie_prob, 0.5, outcome)
  return a, b, outcome


def test_elo_single_game_by_hand_and_order_dependence():
  r = ratings.elo_ratings([0], [1], [1.0], k_factor=32, initial_rating=1500)
  np.testing.assert_allclose(r, [1516, 1484])
  games = ([0, 0], [1, 1], [1.0, 0.0])
  r_fwd = ratings.elo_ratings(*games, k_factor=32)
  r_rev = ratings.elo_ratings(*[g[::-1] for g in games], k_factor=32)
  # a wins then loses: 1016 then 1016 - 32 * (1 - E(-32 Elo)) ...
  e = 1 / (1 + 10 ** (-32 / 400))
  np.testing.assert_allclose(r_fwd, [1016 - 32 * e, 984 + 32 * e])
  assert r_fwd[0] < 1000 < r_rev[0]  # the same games, in another order, rank the players differently
  np.testing.assert_allclose(r_fwd.mean(), 1000.0)


def test_elo_recovers_known_strengths():
  a, b, s = _simulate(0, 20000)
  r = ratings.elo_ratings(a, b, s, k_factor=4.0, num_orderings=4, seed=0)
  np.testing.assert_allclose(r - r[0], TRUE_THETA * ratings.ELO_PER_NAT, atol=35)  # ~ 0.08 nats


def _scipy_bt(a, b, s, num_players):
  def nll(free):
    theta = np.concatenate([[0.0], free])
    d = theta[a] - theta[b]
    return np.sum(s * np.logaddexp(0, -d) + (1 - s) * np.logaddexp(0, d))
  return np.concatenate([[0.0], optimize.minimize(nll, np.zeros(num_players - 1), method="BFGS",
                                                  options={"gtol": 1e-9}).x])


@pytest.mark.parametrize("tie_prob", [0.0, 0.2])
def test_bradley_terry_matches_independent_mle_and_recovers_strengths(tie_prob):
  a, b, s = _simulate(1, 10000, tie_prob=tie_prob)
  res = ratings.bradley_terry_ratings(a, b, s)
  assert res.converged
  np.testing.assert_allclose(res.log_strength_T, _scipy_bt(a, b, s, 5), atol=1e-5)
  if tie_prob == 0:
    np.testing.assert_allclose(res.log_strength_T, TRUE_THETA, atol=0.15)  # ~3 standard errors
  np.testing.assert_allclose(res.elo_T, res.log_strength_T * 400 / np.log(10))


def test_bradley_terry_reference_player_and_prior():
  a, b, s = _simulate(2, 2000)
  base = ratings.bradley_terry_ratings(a, b, s)
  shifted = ratings.bradley_terry_ratings(a, b, s, reference_player=3)
  assert shifted.log_strength_T[3] == 0.0
  np.testing.assert_allclose(shifted.log_strength_T, base.log_strength_T - base.log_strength_T[3], atol=1e-7)
  shrunk = ratings.bradley_terry_ratings(a, b, s, prior_games=50.0)
  assert np.ptp(shrunk.log_strength_T) < np.ptp(base.log_strength_T)
  # prior_games = 50 is the MLE with 50 extra tied games between every pair.
  pairs = np.array([(i, j) for i in range(5) for j in range(i + 1, 5)] * 50)
  aug = _scipy_bt(np.concatenate([a, pairs[:, 0]]), np.concatenate([b, pairs[:, 1]]),
                  np.concatenate([s, np.full(len(pairs), 0.5)]), 5)
  np.testing.assert_allclose(shrunk.log_strength_T, aug, atol=1e-5)
  # All games tied: equal strengths.
  np.testing.assert_allclose(ratings.bradley_terry_ratings(a, b, np.full(a.size, 0.5)).log_strength_T, 0.0,
                             atol=1e-8)


def test_bradley_terry_without_mle_raises_unless_prior():
  a, b, s = [0, 1, 0], [1, 2, 2], [1.0, 1.0, 1.0]  # player 0 never loses
  with pytest.raises(ValueError, match="not strongly connected"):
    ratings.bradley_terry_ratings(a, b, s)
  res = ratings.bradley_terry_ratings(a, b, s, prior_games=1.0)
  assert res.converged and res.log_strength_T[1] < 0 and res.log_strength_T[2] < res.log_strength_T[1]


@pytest.mark.parametrize("args, message", [
    (([0], [0], [1.0]), "against themself"),
    (([0], [1], [0.7]), "outcome_B must be 0, 0.5 or 1; game 0"),
    (([0, 1], [1], [1.0, 0.0]), "equal lengths"),
    (([0.5], [1], [1.0]), "non-negative integer"),
])
def test_bad_games_are_named(args, message):
  with pytest.raises(ValueError, match=message):
    ratings.elo_ratings(*args)
