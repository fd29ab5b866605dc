"""Tests of the lab's review language: lexicon, grammar recogniser and base sampler."""
import math

import numpy as np
import pytest

from rlhf_jax.lab import grammar
from rlhf_jax.lab import lexicon
from rlhf_jax.lab import sampler as sampler_lib


def _reviews(seed, num, aspect_every=3):
  s = sampler_lib.ReviewSampler()
  rng = np.random.default_rng(seed)
  products = list(lexicon.PRODUCTS)
  out = []
  for i in range(num):
    product = products[i % len(products)]
    aspect = lexicon.PRODUCTS[product][i % 5] if i % aspect_every == 0 else None
    out.append(s.sample(product, aspect, rng))
  return out


def test_lexicon_is_small_and_classes_are_disjoint():
  words = [w for w in lexicon.WORD_TAG if w[0].isalpha()]
  assert 200 <= len(words) <= 400  # "a few hundred word types"
  # Every class word list merged into WORD_TAG without collision (the build raises otherwise).
  total = (len(lexicon.PRODUCTS) + len(lexicon.FEATURE_TO_PRODUCT) + len(lexicon.VALENCE)
           + len(lexicon.INTENSIFIER) + sum(len(v) for v in lexicon.FUNCTION_CLASSES.values()))
  assert total == len(lexicon.WORD_TAG)
  assert len(lexicon.FEATURE_TO_PRODUCT) == 5 * len(lexicon.PRODUCTS)
  assert all(-1.0 <= v <= 1.0 for v in lexicon.VALENCE.values())


@pytest.mark.parametrize("text", [
    "The kettle is great.",
    "Overall, the lid of the kettle is very sturdy but slightly heavy.",
    "I would not recommend it.",
    "I really love this kettle.",
    "I bought it yesterday.",
    "I use my kettle daily.",
    "The spout works perfectly.",
    "It is not bad because the handle seems solid.",
    "It is okay. I dislike the lid.",
    "The kettle  is great .",  # whitespace is not part of grammaticality
])
def test_recogniser_accepts_hand_made_sentences(text):
  assert grammar.is_grammatical(text)


@pytest.mark.parametrize("text", [
    "",  # empty
    "The kettle great is.",  # word order
    "I very love it.",  # adjective intensifier before a verb
    "the kettle is great.",  # sentence must start capitalised
    "The Kettle is great.",  # non-initial words are lower case
    "The kettle is great. i love it.",  # "I" is always upper case
    "The kettle is great",  # no final period
    "The kettle is blorp.",  # unknown word
    "The kettle is great great.",  # repeated adjective without conjunction
    "It seems not good.",  # sense copulas take no negation
    "Great.",
    "The kettle is great. It is",  # unterminated fragment
    "The kettle is great!",
])
def test_recogniser_rejects_ungrammatical_text(text):
  assert not grammar.is_grammatical(text)


def test_grammatical_units_counts_each_sentence():
  assert grammar.grammatical_units("The kettle is great. Kettle the is. I love it") == (1, 3)
  assert grammar.grammatical_units("") == (0, 0)


def test_recogniser_accepts_every_sampled_review():
  reviews = _reviews(seed=0, num=600)
  for r in reviews:
    assert grammar.is_grammatical(r.text), r.text
    assert all(grammar.sentence_is_grammatical(grammar.tokenize(grammar.render([s])))
               for s in r.sentences)
  # The grammar's alternatives all occur (the sampler explores the whole language).
  tags = {lexicon.WORD_TAG[w] for r in reviews for s in r.sentences for w in s}
  assert tags == set(lexicon.WORD_TAG.values())


def test_recogniser_rejects_shuffled_sentences():
  rng = np.random.default_rng(1)
  rejected = total = 0
  for r in _reviews(seed=1, num=200):
    for sentence in r.sentences:
      words = list(sentence[:-1])  # keep the final period in place
      if len(set(words)) < 3:
        continue
      shuffled = list(words)
      while shuffled == words:
        shuffled = list(rng.permutation(words))
      total += 1
      rejected += not grammar.is_grammatical(grammar.render([shuffled + ["."]]))
  assert total > 300
  assert rejected / total > 0.97, (rejected, total)


def test_render_and_tokenize_round_trip():
  for r in _reviews(seed=2, num=50):
    tokens = [t.lower() for t in grammar.tokenize(r.text)]
    assert tokens == [w for s in r.sentences for w in s]
    assert r.text == grammar.render(r.sentences)
  assert grammar.render([["i", "love", "it", "."], ["overall", ",", "it", "is", "good", "."]]) == (
      "I love it. Overall, it is good.")
  assert grammar.word_count("Overall, it is good.") == 4


def test_sampler_is_deterministic_per_seed():
  a = [r.text for r in _reviews(seed=5, num=40)]
  b = [r.text for r in _reviews(seed=5, num=40)]
  c = [r.text for r in _reviews(seed=6, num=40)]
  assert a == b
  assert a != c


def test_sampler_lengths_and_mixed_sentiment():
  reviews = _reviews(seed=3, num=600)
  words = np.array([grammar.word_count(r.text) for r in reviews])
  assert words.min() >= 10 and words.max() <= 40
  assert 15 <= words.mean() <= 25
  moods = [r.mood for r in reviews]
  for mood in sampler_lib.MOODS:  # mixed sentiment: every mood about a third of the time
    assert 0.25 < moods.count(mood) / len(moods) < 0.42


def _one_sentence_sampler():
  return sampler_lib.ReviewSampler(sampler_lib.BaseDistribution(
      min_sentences=1, max_sentences=1, min_words=0, max_words=100))


def test_log_prob_matches_hand_computation():
  # Probabilities read off the grammar by hand: sentence alternatives weigh 5,2,1,1,1,2 (sum 12).
  p_usage = (1 / 12) * (3 / 8) * (1 / 5)  # usage; object "it" (3 of 3+2+3); frequency "daily"
  pos_pool = np.mean([p[2] for p in sampler_lib.BaseDistribution().pool_probs])  # over moods
  p_love = (2 / 12) * 0.85 * 0.65 * pos_pool * (1 / 6) * (3 / 8)  # no opener, no "really"
  expected = {"I use it daily.": p_usage, "I love it.": p_love}
  s = _one_sentence_sampler()
  rng = np.random.default_rng(0)
  counts = {t: 0 for t in expected}
  num = 12_000
  for _ in range(num):
    r = s.sample("kettle", None, rng)
    if r.text in expected:
      counts[r.text] += 1
      assert r.log_prob == pytest.approx(math.log(expected[r.text]), abs=1e-12)
  for text, p in expected.items():  # and the sampler really draws them that often
    sd = math.sqrt(num * p * (1 - p))
    assert abs(counts[text] - num * p) < 4 * sd, (text, counts[text], num * p)


def _inside(node, tags, start):
  """{end: P(node derives tags[start:end])}: an independent probabilistic parse of the grammar."""
  if isinstance(node, str):
    return {start + 1: 1.0} if start < len(tags) and tags[start] == node else {}
  if isinstance(node, grammar.Opt):
    out = {start: 1.0 - node.p}
    for end, p in _inside(node.item, tags, start).items():
      out[end] = out.get(end, 0.0) + node.p * p
    return out
  if isinstance(node, grammar.Alt):
    out = {}
    for option, q in zip(node.options, node.probs):
      for end, p in _inside(option, tags, start).items():
        out[end] = out.get(end, 0.0) + q * p
    return out
  frontier = {start: 1.0}  # Seq
  for item in node.items:
    nxt = {}
    for mid, p in frontier.items():
      for end, q in _inside(item, tags, mid).items():
        nxt[end] = nxt.get(end, 0.0) + p * q
    frontier = nxt
  return frontier


def _reference_log_prob(sentences, product, aspect, dist):
  """log p(review) from the documented generative story, summed over the three moods."""
  pools = {"J": (lexicon.NEGATIVE_ADJECTIVES, lexicon.NEUTRAL_ADJECTIVES,
                 lexicon.POSITIVE_ADJECTIVES),
           "V": (lexicon.NEGATIVE_VERBS, lexicon.NEUTRAL_VERBS, lexicon.POSITIVE_VERBS),
           "Y": (lexicon.NEGATIVE_MANNER, lexicon.NEUTRAL_MANNER, lexicon.POSITIVE_MANNER)}
  classes = {}
  for w, t in lexicon.WORD_TAG.items():
    classes.setdefault(t, []).append(w)
  own = lexicon.PRODUCTS[product]
  ar, off = (dist.aspect_rate if aspect else 0.0), dist.off_topic_rate
  per_mood = np.array(dist.mood_probs, np.float64)
  shared = 1.0 / (dist.max_sentences - dist.min_sentences + 1)
  for words in sentences:
    tags = [lexicon.WORD_TAG[w] for w in words]
    shared *= _inside(grammar.SENTENCE, tags, 0).get(len(tags), 0.0)
    for w, t in zip(words, tags):
      if t in pools:
        k = next(i for i, pool in enumerate(pools[t]) if w in pool)
        drawn = 2 - k if "N" in tags else k  # the pool index drawn before "not" reversed it
        per_mood *= np.array([p[drawn] for p in dist.pool_probs]) / len(pools[t][k])
      elif t == "P":
        shared *= 1 - off if w == product else off / (len(lexicon.PRODUCTS) - 1)
      elif t == "F":
        shared *= (ar * (w == aspect) + (1 - ar) * (
            (1 - off) / len(own) if w in own else off / (len(lexicon.FEATURE_TO_PRODUCT) - 5)))
      else:
        shared *= 1.0 / len(classes[t])
  return math.log(shared) + math.log(per_mood.sum())


def test_log_prob_matches_independent_parse_of_every_review():
  d = sampler_lib.BaseDistribution()
  s = sampler_lib.ReviewSampler(d)
  rng = np.random.default_rng(7)
  negated = 0
  for i in range(300):
    product = list(lexicon.PRODUCTS)[i % 20]
    aspect = lexicon.PRODUCTS[product][i % 5] if i % 2 else None
    r = s.sample(product, aspect, rng)
    negated += "not" in r.text
    assert r.log_prob == pytest.approx(
        _reference_log_prob(r.sentences, product, aspect, d), rel=1e-9, abs=1e-9), r.text
  assert negated > 20  # the mood reversal under "not" is exercised


def test_off_topic_and_aspect_rates():
  s = _one_sentence_sampler()
  rng = np.random.default_rng(4)
  own = other = aspect_hits = features = 0
  for _ in range(3000):
    for w in s.sample("kettle", "lid", rng).sentences[0]:
      if w in lexicon.FEATURE_TO_PRODUCT:
        features += 1
        aspect_hits += w == "lid"
        if lexicon.FEATURE_TO_PRODUCT[w] == "kettle":
          own += 1
        else:
          other += 1
  d = sampler_lib.BaseDistribution()
  expected_aspect = d.aspect_rate + (1 - d.aspect_rate) * (1 - d.off_topic_rate) / 5
  assert aspect_hits / features == pytest.approx(expected_aspect, abs=0.04)
  assert other / features == pytest.approx((1 - d.aspect_rate) * d.off_topic_rate, abs=0.01)


def test_sampler_rejects_bad_arguments():
  s = sampler_lib.ReviewSampler()
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="unknown product 'toy'"):
    s.sample("toy", None, rng)
  with pytest.raises(ValueError, match="aspect 'lens' is not a feature of 'kettle'"):
    s.sample("kettle", "lens", rng)
  with pytest.raises(ValueError, match="min_sentences"):
    sampler_lib.BaseDistribution(min_sentences=3, max_sentences=2).validate()
  with pytest.raises(ValueError, match="mood_probs"):
    sampler_lib.BaseDistribution(mood_probs=(0.5, 0.5, 0.5)).validate()
