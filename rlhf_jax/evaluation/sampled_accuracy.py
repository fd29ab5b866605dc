"""Accuracy from N samples per problem: unbiased pass@k, best-of-N by a scorer, majority@N.

Shape letters: B problems (prompts), N samples per problem.
"""
from __future__ import annotations

import collections
import math
from typing import Hashable, NamedTuple, Sequence

import numpy as np
import numpy.typing as npt


def pass_at_k(num_samples_B: npt.ArrayLike, num_correct_B: npt.ArrayLike, k: int) -> np.ndarray:
  """Unbiased pass@k per problem (Chen et al. 2021, "Evaluating LLMs Trained on Code").

  From n samples of which c are correct, the probability that a random k-subset (drawn without
  replacement) holds at least one correct sample is

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i),

  evaluated in the product form, which avoids huge binomials; it is 1 when n - c < k.
  Average the result over problems for the benchmark number. Example: n=5, c=1, k=2 gives 0.4.
  """
  n_B = np.atleast_1d(np.asarray(num_samples_B))
  c_B = np.atleast_1d(np.asarray(num_correct_B))
  if n_B.shape != c_B.shape or n_B.ndim != 1:
    raise ValueError(f"num_samples_B and num_correct_B must be equal-length 1-D, got {n_B.shape} "
                     f"and {c_B.shape}")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  out = np.empty(n_B.size)
  for b, (n, c) in enumerate(zip(n_B.tolist(), c_B.tolist())):
    if n != int(n) or c != int(c) or not 0 <= c <= n:
      raise ValueError(f"problem {b}: need integers 0 <= num_correct <= num_samples, got c={c}, "
                       f"n={n}")
    if n < k:
      raise ValueError(f"problem {b}: pass@{k} needs at least k samples, got n={n}")
    n, c = int(n), int(c)
    out[b] = 1.0 if n - c < k else 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
  return out


def _check_matrix(name: str, x: npt.ArrayLike) -> np.ndarray:
  arr = np.asarray(x, np.float64)
  if arr.ndim != 2 or arr.shape[1] == 0:
    raise ValueError(f"{name} must be [problems, samples] with samples >= 1, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} must be finite")
  return arr


def expected_best_of_k(scores_BxN: npt.ArrayLike, values_BxN: npt.ArrayLike, k: int) -> np.ndarray:
  """Unbiased estimate, per problem, of the value of the top-scored sample among k of the N.

  If k of the N samples are drawn without replacement and the one with the highest score is kept
  (best-of-k with a reward model), the sample of rank j (1 = lowest score) is kept with
  probability C(j - 1, k - 1) / C(N, k), so

    E[value of best-of-k] = sum_j C(j - 1, k - 1) / C(N, k) * value_(j).

  Score ties are broken towards the lower sample index (as `numpy.argmax` does), so with k = N
  this is the value of `argmax(scores)`: best@N. With values = correctness this is the accuracy
  of best-of-k reranking; with values = a gold reward it is the best-of-k reward curve.
  """
  scores = _check_matrix("scores_BxN", scores_BxN)
  values = _check_matrix("values_BxN", values_BxN)
  if scores.shape != values.shape:
    raise ValueError(f"scores_BxN {scores.shape} and values_BxN {values.shape} must match")
  n = scores.shape[1]
  if not 1 <= k <= n:
    raise ValueError(f"k must lie in [1, {n}], got {k}")
  # Ascending by score; among equal scores, higher index first so the lowest index ranks highest.
  order_BxN = np.lexsort((-np.arange(n)[None, :].repeat(scores.shape[0], 0), scores), axis=1)
  sorted_values = np.take_along_axis(values, order_BxN, axis=1)
  total = math.comb(n, k)
  weight_N = np.array([math.comb(j - 1, k - 1) / total for j in range(1, n + 1)])
  return sorted_values @ weight_N


def best_at_n(scores_BxN: npt.ArrayLike, correct_BxN: npt.ArrayLike) -> float:
  """best@N: mean correctness of the highest-scored of the N samples (first index on score ties)."""
  return float(np.mean(expected_best_of_k(scores_BxN, correct_BxN, np.shape(scores_BxN)[-1])))


class MajorityAtN(NamedTuple):
  """Result of `majority_at_n`."""
  accuracy: float  # mean of correct_B
  correct_B: np.ndarray  # bool: the majority answer equals the reference
  answer_B: list  # the majority answer per problem (None when every answer was None)
  num_tied: int  # problems where the top vote count was shared and the tie-break decided


def majority_at_n(answers_BxN: Sequence[Sequence[Hashable | None]],
                  references_B: Sequence[Hashable]) -> MajorityAtN:
  """majority@N (self-consistency, Wang et al. 2023): vote over N extracted answers per problem.

  `None` answers (nothing could be extracted) do not vote; a problem where every answer is None
  counts as wrong. Ties between the most frequent answers go to the one that occurs first among
  the samples, which is deterministic given the sample order; they are counted in `num_tied`.
  Answers are compared with ==, so normalise them (e.g. strip, parse numbers) beforehand.
  """
  if len(answers_BxN) != len(references_B):
    raise ValueError(f"answers_BxN has {len(answers_BxN)} problems but references_B has "
                     f"{len(references_B)}")
  correct, majority, num_tied = [], [], 0
  for answers in answers_BxN:
    votes = collections.Counter(a for a in answers if a is not None)  # insertion-ordered
    if not votes:
      majority.append(None)
      continue
    top = max(votes.values())
    leaders = [a for a, v in votes.items() if v == top]  # in order of first appearance
    num_tied += len(leaders) > 1
    majority.append(leaders[0])
  correct = np.array([m is not None and m == r for m, r in zip(majority, references_B)], bool)
  accuracy = float(correct.mean()) if correct.size else float("nan")
  return MajorityAtN(accuracy, correct, majority, num_tied)
