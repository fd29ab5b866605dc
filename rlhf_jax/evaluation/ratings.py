"""Player ratings from pairwise games: sequential Elo and Bradley-Terry (BT) maximum likelihood.

A game is (player_a, player_b, outcome) with outcome 1 if a won, 0 if b won and 1/2 for a tie.
Both models say P(a beats b) = 1 / (1 + 10^((R_b - R_a) / 400)) on the Elo scale, i.e.
sigmoid(theta_a - theta_b) with natural-log strengths theta = R ln(10) / 400.

Shape letters, extending the house table for this module: B games, T players.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
from scipy.sparse import csgraph

ELO_PER_NAT = 400.0 / np.log(10.0)  # Elo points per unit of natural-log strength


def _check_games(player_a_B: npt.ArrayLike, player_b_B: npt.ArrayLike, outcome_B: npt.ArrayLike,
                 num_players: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  a, b = np.asarray(player_a_B), np.asarray(player_b_B)
  s = np.asarray(outcome_B, np.float64)
  for name, arr in (("player_a_B", a), ("player_b_B", b), ("outcome_B", s)):
    if arr.ndim != 1:
      raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
  if not a.size == b.size == s.size:
    raise ValueError(f"player_a_B, player_b_B, outcome_B need equal lengths: {a.size}, {b.size}, "
                     f"{s.size}")
  for name, arr in (("player_a_B", a), ("player_b_B", b)):
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0):
      raise ValueError(f"{name} must hold non-negative integer player ids")
  if num_players is None:
    num_players = int(max(a.max(initial=-1), b.max(initial=-1)) + 1)
  for name, arr in (("player_a_B", a), ("player_b_B", b)):
    if arr.size and arr.max() >= num_players:
      bad = int(np.argmax(arr >= num_players))
      raise ValueError(f"{name} entry {bad} is {arr[bad]}, outside [0, {num_players})")
  if np.any(a == b):
    raise ValueError(f"game {int(np.flatnonzero(a == b)[0])} pits a player against themself")
  bad = (s != 0.0) & (s != 0.5) & (s != 1.0)
  if np.any(bad):
    raise ValueError(f"outcome_B must be 0, 0.5 or 1; game {int(np.flatnonzero(bad)[0])} has "
                     f"{s[bad][0]}")
  return a.astype(np.int64), b.astype(np.int64), s, num_players


def elo_ratings(player_a_B: npt.ArrayLike, player_b_B: npt.ArrayLike, outcome_B: npt.ArrayLike, *,
                num_players: int | None = None, k_factor: float = 4.0,
                initial_rating: float = 1000.0, num_orderings: int = 1,
                seed: int = 0) -> np.ndarray:
  """Elo ratings (Elo 1978) from games played in sequence; returns ratings_T.

  For each game in order, with E = 1 / (1 + 10^((R_b - R_a) / 400)):
    R_a += K (s - E),    R_b -= K (s - E).

  Elo is order-dependent: the same games in another order give different ratings, and recent
  games weigh more (the larger K, the more). With `num_orderings` > 1 the games are replayed in
  that many seeded random orders and the ratings averaged, which removes most of the order effect;
  `bradley_terry_ratings` is the order-free maximum-likelihood alternative. The total rating is
  conserved: ratings always average `initial_rating`.
  """
  a, b, s, num_players = _check_games(player_a_B, player_b_B, outcome_B, num_players)
  if num_orderings < 1:
    raise ValueError(f"num_orderings must be >= 1, got {num_orderings}")
  rng = np.random.default_rng(seed)
  total = np.zeros(num_players)
  for ordering in range(num_orderings):
    order = np.arange(a.size) if ordering == 0 and num_orderings == 1 else rng.permutation(a.size)
    r = np.full(num_players, float(initial_rating))
    for i, j, outcome in zip(a[order].tolist(), b[order].tolist(), s[order].tolist()):
      delta = k_factor * (outcome - 1.0 / (1.0 + 10.0 ** ((r[j] - r[i]) / 400.0)))
      r[i] += delta
      r[j] -= delta
    total += r
  return total / num_orderings


@dataclasses.dataclass(frozen=True)
class BradleyTerryRatings:
  """Maximum-likelihood strengths with the reference player at 0."""
  log_strength_T: np.ndarray  # natural-log strengths theta
  elo_T: np.ndarray  # the same on the Elo scale: theta * 400 / ln 10
  num_iters: int
  converged: bool


def bradley_terry_ratings(player_a_B: npt.ArrayLike, player_b_B: npt.ArrayLike,
                          outcome_B: npt.ArrayLike, *, num_players: int | None = None,
                          reference_player: int = 0, prior_games: float = 0.0,
                          max_iters: int = 10_000, tol: float = 1e-10) -> BradleyTerryRatings:
  """Bradley-Terry (1952) maximum likelihood by the minorisation-maximisation (MM) algorithm.

  Model: P(i beats j) = gamma_i / (gamma_i + gamma_j). With W_i the wins of i (a tie is half a
  win for each side) and n_ij the games between i and j, Hunter (2004, eq. 3) iterates
    gamma_i <- W_i / sum_j n_ij / (gamma_i + gamma_j),
  which increases the likelihood every step; we then rescale so gamma_reference = 1 and stop when
  max |change in log gamma| < tol.

  The maximum exists only if the "beat or tied" graph is strongly connected (Hunter's Assumption
  1): otherwise some strength would run off to infinity and a ValueError says so. `prior_games`
  adds that many virtual tied games between every pair of players, a shrinkage towards equal
  strength that always makes the maximum exist.
  """
  a, b, s, num_players = _check_games(player_a_B, player_b_B, outcome_B, num_players)
  if not 0 <= reference_player < num_players:
    raise ValueError(f"reference_player {reference_player} is outside [0, {num_players})")
  # wins_TxT[i, j]: (fractional) wins of i against j.
  wins_TxT = np.zeros((num_players, num_players))
  np.add.at(wins_TxT, (a, b), s)
  np.add.at(wins_TxT, (b, a), 1.0 - s)
  wins_TxT += 0.5 * prior_games * (1.0 - np.eye(num_players))
  games_TxT = wins_TxT + wins_TxT.T
  num_components, _ = csgraph.connected_components(wins_TxT > 0, directed=True, connection="strong")
  if num_components > 1:
    raise ValueError(
        "the Bradley-Terry maximum likelihood does not exist: the graph of who beat (or tied) "
        f"whom is not strongly connected ({num_components} components), e.g. a player never "
        "lost or never won. Add games or pass prior_games > 0.")
  wins_T = wins_TxT.sum(axis=1)
  gamma_T = np.ones(num_players)
  converged = False
  it = 0
  for it in range(1, max_iters + 1):
    new_gamma_T = wins_T / (games_TxT / (gamma_T[:, None] + gamma_T[None, :])).sum(axis=1)
    new_gamma_T /= new_gamma_T[reference_player]
    change = np.max(np.abs(np.log(new_gamma_T) - np.log(gamma_T)))
    gamma_T = new_gamma_T
    if change < tol:
      converged = True
      break
  theta_T = np.log(gamma_T)
  return BradleyTerryRatings(theta_T, theta_T * ELO_PER_NAT, it, converged)
