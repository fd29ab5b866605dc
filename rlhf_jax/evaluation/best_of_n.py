"""Kullback-Leibler (KL) divergence of the best-of-N policy from the base policy.

Best-of-N draws N responses from pi and keeps the highest-reward one. For a continuous reward
distribution (no ties) its KL from pi is exactly  log N - (N - 1) / N  (Stiennon et al. 2020,
"Learning to summarize from human feedback"; Hilton & Gao, "Measuring Goodhart's law", 2022).
Beirami et al. 2024 ("Theoretical guarantees on the best-of-n alignment policy") show it is an
upper bound once responses can repeat; `best_of_n_kl_discrete` gives the exact value for a
finite distribution.

Shape letter: V outcomes of a finite distribution (as in a vocabulary).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt


def best_of_n_kl(n: int | npt.ArrayLike) -> np.ndarray | float:
  """Analytical KL(best-of-N || base) = log N - (N - 1) / N, in nats; 0 for N = 1.

  Derivation: the best-of-N density is N F^{N-1} f, so the KL is E[log(N F^{N-1})] with
  F ~ Beta(N, 1), whose E[log F] = -1/N. Example: best_of_n_kl(4) = log 4 - 0.75 ≈ 0.636.
  """
  n_arr = np.asarray(n, np.float64)
  if np.any(n_arr < 1) or np.any(n_arr != np.floor(n_arr)):
    raise ValueError(f"n must be a positive integer, got {n}")
  out = np.log(n_arr) - (n_arr - 1.0) / n_arr
  return float(out) if out.ndim == 0 else out


def best_of_n_kl_discrete(probs_V: npt.ArrayLike, rewards_V: npt.ArrayLike, n: int) -> float:
  """Exact KL(best-of-N || base) for a finite distribution, in nats.

  Outcomes are grouped by equal reward and the groups ranked. With F_j the base probability of
  the groups up to and including group j, best-of-N lands in group j with probability
  q_j = F_j^N - F_{j-1}^N. Ties between samples of the top group are broken by sample order
  (keep the first), which ignores their identity, so within a group best-of-N keeps the base
  proportions and  KL = sum_j q_j log(q_j / p_j)  over groups with base mass p_j.
  """
  p = np.asarray(probs_V, np.float64)
  r = np.asarray(rewards_V, np.float64)
  if p.ndim != 1 or p.shape != r.shape or p.size == 0:
    raise ValueError(f"probs_V and rewards_V must be equal-length 1-D, got {p.shape} and {r.shape}")
  if np.any(p < 0) or abs(p.sum() - 1.0) > 1e-9:
    raise ValueError("probs_V must be non-negative and sum to 1")
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  keep = p > 0
  p, r = p[keep], r[keep]
  levels, group = np.unique(r, return_inverse=True)
  p_group = np.bincount(group, p, levels.size)
  cdf = np.minimum(np.cumsum(p_group), 1.0)
  q_group = cdf**n - np.concatenate([[0.0], cdf[:-1]]) ** n
  pos = q_group > 0
  return float(np.sum(q_group[pos] * (np.log(q_group[pos]) - np.log(p_group[pos]))))
