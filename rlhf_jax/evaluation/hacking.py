"""Reward-hacking signals on generated responses: length, repetition and diversity, and how
strongly each correlates with the reward (a policy that games its reward model often grows
longer, more repetitive and less diverse while the reward climbs; Singhal et al. 2023).

A response is either a string (split on whitespace into words) or a sequence of token ids.

Shape letter: B responses.
"""
from __future__ import annotations

import collections
from typing import Hashable, Sequence, Union

import numpy as np
import numpy.typing as npt

from rlhf_jax.evaluation import correlation

Response = Union[str, Sequence[Hashable]]


def tokens_of(response: Response) -> list:
  """Whitespace-separated words for a string, the token ids themselves otherwise."""
  return response.split() if isinstance(response, str) else list(response)


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
  """The len(tokens) - n + 1 contiguous n-grams, in order (none when the sequence is shorter)."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def response_lengths(responses: Sequence[Response]) -> np.ndarray:
  """Length of each response in words (strings) or tokens (id sequences); returns lengths_B."""
  return np.array([len(tokens_of(r)) for r in responses], np.float64)


def repetition_rate(responses: Sequence[Response], n: int = 2) -> np.ndarray:
  """Per-response fraction of n-gram occurrences that repeat an earlier n-gram of the same response.

    rep_n = 1 - |distinct n-grams| / |n-grams|.

  0 for a response without repeats and for one shorter than n (it has no n-grams). Example:
  "the cat the cat" has bigrams (the cat), (cat the), (the cat): rep_2 = 1 - 2/3.
  """
  out = np.zeros(len(responses))
  for b, r in enumerate(responses):
    grams = ngrams(tokens_of(r), n)
    if grams:
      out[b] = 1.0 - len(set(grams)) / len(grams)
  return out


def distinct_n(responses: Sequence[Response], n: int = 1) -> float:
  """Corpus-level distinct-n (Li et al. 2016): distinct n-grams / total n-grams over all responses.

  Lower values mean less diverse generations (mode collapse). NaN when there are no n-grams.
  """
  counts = collections.Counter(g for r in responses for g in ngrams(tokens_of(r), n))
  total = sum(counts.values())
  return float("nan") if total == 0 else len(counts) / total


def hacking_signals(responses: Sequence[Response], rewards_B: npt.ArrayLike,
                    ngram_sizes: Sequence[int] = (1, 2)) -> dict[str, float]:
  """Slash-named summary of hacking signals and their correlation with the reward.

  Returns `length/mean`, `length/spearman_reward`, `length/pearson_reward`, and for each n in
  `ngram_sizes`: `repetition_{n}/mean`, `repetition_{n}/spearman_reward`,
  `repetition_{n}/pearson_reward` and `distinct_{n}`. Correlations are NaN when a signal or the
  reward is constant. A strong positive length-reward correlation is the classic length hack.
  """
  rewards = correlation.as_float_vector("rewards_B", rewards_B)
  if rewards.size != len(responses):
    raise ValueError(f"rewards_B has {rewards.size} entries but there are {len(responses)} "
                     "responses")
  signals = {"length": response_lengths(responses)}
  for n in ngram_sizes:
    signals[f"repetition_{n}"] = repetition_rate(responses, n)
  out = {}
  for name, values in signals.items():
    out[f"{name}/mean"] = float(np.mean(values))
    if rewards.size >= 2:
      out[f"{name}/spearman_reward"] = correlation.spearman(values, rewards)
      out[f"{name}/pearson_reward"] = correlation.pearson(values, rewards)
  for n in ngram_sizes:
    out[f"distinct_{n}"] = distinct_n(responses, n)
  return out
