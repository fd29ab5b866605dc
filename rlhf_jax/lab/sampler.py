"""The base distribution of the review language: a seeded sampler of reviews for a product.

Each review draws a latent mood (negative, mixed or positive). Valenced slots (adjectives J,
liking verbs V, manner adverbs Y) first pick a pool (negative / neutral / positive) with the
mood's probabilities, reversed inside a sentence that contains "not", then a word uniformly from
the pool. Product and feature slots name the prompt's product (or its requested aspect) except
for a small off-topic rate. Every other slot is uniform over its class. Reviews have
`min_sentences..max_sentences` sentences and are redrawn until their word count lies in
`[min_words, max_words]`.

The sampler also returns the exact log-probability of each review under the grammar, summed
over the latent mood (the grammar is unambiguous, so this is the probability of the string
before the length filter); `corpora.learnability` turns it into an entropy estimate.
"""
from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from typing import NamedTuple

import numpy as np

from rlhf_jax.lab import grammar
from rlhf_jax.lab import lexicon

MOODS = ("negative", "mixed", "positive")
_VALENCED_POOLS = {  # (negative, neutral, positive) word pools of each valenced class
    tag: tuple(tuple(pool) for pool in pools) for tag, pools in {
        "J": (lexicon.NEGATIVE_ADJECTIVES, lexicon.NEUTRAL_ADJECTIVES,
              lexicon.POSITIVE_ADJECTIVES),
        "V": (lexicon.NEGATIVE_VERBS, lexicon.NEUTRAL_VERBS, lexicon.POSITIVE_VERBS),
        "Y": (lexicon.NEGATIVE_MANNER, lexicon.NEUTRAL_MANNER, lexicon.POSITIVE_MANNER),
    }.items()}
_UNIFORM_CLASSES = {
    "A": tuple(lexicon.ADJECTIVE_INTENSIFIERS), "R": tuple(lexicon.VERB_INTENSIFIERS),
    **lexicon.FUNCTION_CLASSES}
_ALL_FEATURES = tuple(lexicon.FEATURE_TO_PRODUCT)


@dataclasses.dataclass(frozen=True)
class BaseDistribution:
  """Parameters of the base (pre-RL) review distribution."""

  min_sentences: int = 2  # sentences per review, drawn uniformly in [min, max]
  max_sentences: int = 5
  min_words: int = 10  # reviews outside [min_words, max_words] words are redrawn
  max_words: int = 40
  off_topic_rate: float = 0.03  # P(a product / feature slot names another product's)
  aspect_rate: float = 0.5  # P(a feature slot names the prompt's requested aspect, if any)
  mood_probs: tuple[float, float, float] = (1 / 3, 1 / 3, 1 / 3)  # negative, mixed, positive
  # P(negative, neutral, positive pool) of a valenced slot, for each mood.
  pool_probs: tuple[tuple[float, float, float], ...] = (
      (0.6, 0.25, 0.15), (0.4, 0.2, 0.4), (0.15, 0.25, 0.6))

  def validate(self) -> "BaseDistribution":
    if not 1 <= self.min_sentences <= self.max_sentences:
      raise ValueError(f"need 1 <= min_sentences <= max_sentences, got "
                       f"{self.min_sentences}, {self.max_sentences}")
    if not 0 <= self.min_words <= self.max_words:
      raise ValueError(f"need 0 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
    for name in ("off_topic_rate", "aspect_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
    for name, probs in [("mood_probs", self.mood_probs), *(
        (f"pool_probs[{i}]", p) for i, p in enumerate(self.pool_probs))]:
      if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-9:
        raise ValueError(f"{name} must be 3 non-negative probabilities summing to 1, got {probs}")
    return self


class SampledReview(NamedTuple):
  """One review: its text, per-sentence tokens, mood and log-probability (nats)."""
  text: str
  sentences: tuple[tuple[str, ...], ...]
  mood: str
  log_prob: float  # log p(text) under the grammar, marginal over mood, before the length filter
  attempts: int  # draws needed to pass the length filter (for the acceptance rate)


class _Uniforms:
  """Uniform(0, 1) draws from a numpy Generator, fetched in blocks for speed."""

  def __init__(self, rng: np.random.Generator, block: int = 512):
    self._rng, self._block = rng, block
    self._buf, self._i = rng.random(block).tolist(), 0

  def __call__(self) -> float:
    if self._i == self._block:
      self._buf, self._i = self._rng.random(self._block).tolist(), 0
    self._i += 1
    return self._buf[self._i - 1]


def _pick(cum_probs: tuple[float, ...], u: float) -> int:
  return min(bisect.bisect_right(cum_probs, u), len(cum_probs) - 1)


class ReviewSampler:
  """Samples reviews of a product (optionally asked to mention an `aspect` feature)."""

  def __init__(self, dist: BaseDistribution = BaseDistribution()):
    self.dist = dist.validate()
    self._pool_cum = [tuple(np.cumsum(p)) for p in dist.pool_probs]
    self._mood_cum = tuple(np.cumsum(dist.mood_probs))
    self._topic_cache: dict = {}

  def sample(self, product: str, aspect: str | None, rng: np.random.Generator) -> SampledReview:
    """One review of `product`; `aspect` (one of its features) is mentioned more often."""
    if product not in lexicon.PRODUCTS:
      raise ValueError(f"unknown product {product!r}; known: {sorted(lexicon.PRODUCTS)}")
    if aspect is not None and aspect not in lexicon.PRODUCTS[product]:
      raise ValueError(f"aspect {aspect!r} is not a feature of {product!r}: "
                       f"{lexicon.PRODUCTS[product]}")
    uniform = _Uniforms(rng)
    d = self.dist
    attempts = 0
    while True:
      attempts += 1
      mood = _pick(self._mood_cum, uniform())
      num_sentences = d.min_sentences + int(uniform() * (d.max_sentences - d.min_sentences + 1))
      logp_shared = -math.log(d.max_sentences - d.min_sentences + 1)
      logp_mood = [0.0, 0.0, 0.0]
      sentences = []
      for _ in range(num_sentences):
        tags: list[str] = []
        logp_shared += _expand(grammar.SENTENCE, uniform, tags)
        words, lp_shared, lp_mood = self._fill(tags, mood, product, aspect, uniform)
        logp_shared += lp_shared
        logp_mood = [a + b for a, b in zip(logp_mood, lp_mood)]
        sentences.append(tuple(words))
      num_words = sum(w not in (",", ".") for s in sentences for w in s)
      if d.min_words <= num_words <= d.max_words:
        break
    log_prob = logp_shared + _logsumexp([_log(pm) + lp for pm, lp in zip(d.mood_probs, logp_mood)])
    return SampledReview(grammar.render(sentences), tuple(sentences), MOODS[mood], log_prob,
                         attempts)

  def _fill(self, tags, mood, product, aspect, uniform):
    """Chooses a word for each tag; returns words, mood-free log-prob, per-mood log-probs."""
    negated = "N" in tags
    words, lp_shared, lp_mood = [], 0.0, [0.0, 0.0, 0.0]
    for tag in tags:
      if tag in _VALENCED_POOLS:
        k = _pick(self._pool_cum[mood], uniform())
        if negated:  # "not" reverses the pool, so a negative review says "is not good"
          k = 2 - k
        pool = _VALENCED_POOLS[tag][k]
        words.append(pool[int(uniform() * len(pool)) % len(pool)])
        lp_shared -= math.log(len(pool))
        for m in range(3):
          lp_mood[m] += _log(self.dist.pool_probs[m][2 - k if negated else k])
      elif tag in ("P", "F"):
        words_, cum, logps = self._topic_table(tag, product, aspect)
        i = _pick(cum, uniform())
        words.append(words_[i])
        lp_shared += logps[i]
      else:
        vocab = _UNIFORM_CLASSES[tag]
        words.append(vocab[int(uniform() * len(vocab)) % len(vocab)])
        lp_shared -= math.log(len(vocab))
    return words, lp_shared, lp_mood

  def _topic_table(self, tag: str, product: str, aspect: str | None):
    """Words, cumulative probabilities and log-probabilities of a product / feature slot."""
    key = (tag, product, aspect)
    if key not in self._topic_cache:
      self._topic_cache[key] = self._make_topic_table(tag, product, aspect)
    return self._topic_cache[key]

  def _make_topic_table(self, tag: str, product: str, aspect: str | None):
    off = self.dist.off_topic_rate
    if tag == "P":
      others = [p for p in lexicon.PRODUCTS if p != product]
      probs = {product: 1.0 - off, **{p: off / len(others) for p in others}}
    else:
      own = lexicon.PRODUCTS[product]
      others = [f for f in _ALL_FEATURES if f not in own]
      ar = self.dist.aspect_rate if aspect is not None else 0.0
      probs = {f: (1 - ar) * (1 - off) / len(own) for f in own}
      probs.update({f: (1 - ar) * off / len(others) for f in others})
      if aspect is not None:
        probs[aspect] += ar
    words = tuple(w for w, p in probs.items() if p > 0)
    p = np.array([probs[w] for w in words])
    return words, tuple(np.cumsum(p / p.sum())), tuple(np.log(p / p.sum()))


def _expand(node: grammar.Node, uniform: _Uniforms, out: list[str]) -> float:
  """Appends a random tag sequence derived from `node` to `out`; returns its log-probability."""
  if isinstance(node, str):
    out.append(node)
    return 0.0
  if isinstance(node, grammar.Seq):
    return sum(_expand(n, uniform, out) for n in node.items)
  if isinstance(node, grammar.Opt):
    if uniform() < node.p:
      return math.log(node.p) + _expand(node.item, uniform, out)
    return math.log1p(-node.p)
  if isinstance(node, grammar.Alt):
    i = _pick(_cumulative(node.probs), uniform())
    return math.log(node.probs[i]) + _expand(node.options[i], uniform, out)
  raise TypeError(f"not a grammar node: {node!r}")


@functools.lru_cache(maxsize=None)
def _cumulative(probs: tuple[float, ...]) -> tuple[float, ...]:
  return tuple(np.cumsum(probs))


def _log(p: float) -> float:
  return math.log(p) if p > 0 else -math.inf


def _logsumexp(xs: list[float]) -> float:
  m = max(xs)  # finite: the sampled mood has a positive probability of every choice made
  return m + math.log(sum(math.exp(x - m) for x in xs))
