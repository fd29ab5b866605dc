"""Tests of the lab's gold reward: each component on hand-made examples and a NumPy reference."""
import dataclasses
import math
import re
import time

import numpy as np
import pytest

from rlhf_jax.lab import gold
from rlhf_jax.lab import grammar
from rlhf_jax.lab import lexicon
from rlhf_jax.lab import sampler as sampler_lib

KETTLE = "Write a review of the kettle."


def _one(response, prompt=KETTLE, config=gold.GoldConfig()):
  r = gold.gold_reward([prompt], [response], config)
  return {"total": float(r.total[0]), **{c: float(v[0]) for c, v in r.components().items()}}


def test_docstring_example_by_hand():
  r = _one("The kettle is great. I love it.")
  sentiment = math.tanh((0.9 + 1.0) / 2.0)
  assert r["sentiment"] == pytest.approx(sentiment, abs=1e-12)
  assert r["relevance"] == 0.5  # product named, no feature
  assert r["grammar"] == r["repetition"] == r["length"] == r["ending"] == 0.0
  assert r["total"] == pytest.approx(2.0 * sentiment + 0.5, abs=1e-12)
  assert gold.GoldConfig().total_range() == (-8.5, 3.0)


def test_repeating_a_positive_word_saturates_sentiment_and_grows_repetition_penalty():
  rows = [_one(" ".join(["It is great."] * k)) for k in range(1, 8)]
  sentiment = np.array([r["sentiment"] for r in rows])
  repetition = np.array([r["repetition"] for r in rows])
  total = np.array([r["total"] for r in rows])
  gains = np.diff(sentiment)
  assert np.all(gains > 0) and np.all(np.diff(gains) < 0)  # increasing, sub-linearly
  assert sentiment[-1] < math.tanh(0.9 * 2 / 2.0)  # geometric decay caps the raw sum at 2x
  assert repetition[0] == 0.0 and np.all(np.diff(repetition) < 0)  # penalty grows with k
  assert np.all(np.diff(total) < 0)  # gold falls although a proxy may see "more great"
  assert all(r["grammar"] == 0.0 for r in rows)  # the hack is grammatical, yet penalised


def test_word_salad_is_penalised():
  salad = _one("Great love excellent perfect amazing kettle.")
  clean = _one("The kettle is great.")
  assert salad["grammar"] == -1.0
  assert salad["sentiment"] > clean["sentiment"]  # more positive words ...
  assert salad["total"] < clean["total"]  # ... but lower gold
  shuffled = _one("Kettle great the is. I love it.")
  assert shuffled["grammar"] == -0.5  # one of two sentences is ungrammatical


@pytest.mark.parametrize("k, expected", [(13, 0.0), (14, -2 / 40), (20, -0.5), (30, -1.0)])
def test_length_penalty_beyond_comfortable_length(k, expected):
  text = " ".join(["It is good."] * k)  # 3 words per sentence
  assert _one(text)["length"] == pytest.approx(expected, abs=1e-12)


def test_ending_requires_final_period():
  assert _one("The kettle is great")["ending"] == -1.0
  assert _one("The kettle is great")["grammar"] == -1.0  # the unterminated unit fails too
  assert _one("The kettle is great. \n")["ending"] == 0.0
  assert _one("")["ending"] == -1.0 and _one("")["grammar"] == -1.0


def test_relevance_rewards_product_and_aspect_and_punishes_off_topic():
  aspect_prompt = "Write a review of the kettle that mentions the lid."
  assert _one("It is great.")["relevance"] == 0.0
  assert _one("The kettle is great.")["relevance"] == 0.5
  assert _one("The spout of the kettle is great.")["relevance"] == 1.0  # any own feature
  assert _one("The spout of the kettle is great.", aspect_prompt)["relevance"] == 0.5
  assert _one("The lid of the kettle is great.", aspect_prompt)["relevance"] == 1.0
  assert _one("The lens is great.")["relevance"] == -0.5  # another product's feature
  assert _one("The lens of the camera is great. The laptop is good.")["relevance"] == -1.0


def test_negation_and_intensifiers():
  assert _one("It is good.")["sentiment"] == pytest.approx(math.tanh(0.6 / 2), abs=1e-12)
  assert _one("It is very good.")["sentiment"] == pytest.approx(
      math.tanh(1.5 * 0.6 / 2), abs=1e-12)
  assert _one("It is not good.")["sentiment"] == pytest.approx(
      math.tanh(-0.5 * 0.6 / 2), abs=1e-12)
  # Negation is per sentence; "really" intensifies the verb.
  assert _one("It is not bad. I really love it.")["sentiment"] == pytest.approx(
      math.tanh((-0.5 * -0.7 + 1.5 * 1.0) / 2), abs=1e-12)


def _reference(product, aspect, text, grammatical_units, cfg):
  """Independent float64 NumPy reference of every component except grammar (given)."""
  toks = re.findall(r"[A-Za-z]+|[.,:;!?'\"0-9]", text)
  low = [t.lower() for t in toks]
  n = len(low)
  val = np.array([lexicon.VALENCE.get(w, 0.0) for w in low], np.float64)
  mult = np.ones(n)
  mult[1:] = [lexicon.INTENSIFIER.get(w, 1.0) for w in low[:-1]]
  sent_id = np.cumsum([0] + [w == "." for w in low[:-1]]).astype(int)
  negated = {s for s, w in zip(sent_id, low) if w == "not"}
  neg = np.where(np.isin(sent_id, sorted(negated)), cfg.negation_factor, 1.0)
  occ = np.array([low[:i].count(w) for i, w in enumerate(low)], np.float64)
  sentiment = np.tanh(np.sum(val * mult * neg * cfg.repeat_decay**occ) / cfg.sentiment_scale)
  own = set(lexicon.PRODUCTS[product])
  feature_hit = (aspect in low) if aspect else bool(own & set(low))
  off = sum(1 for w in low if (w in lexicon.PRODUCTS and w != product)
            or (w in lexicon.FEATURE_TO_PRODUCT and w not in own))
  relevance = 0.5 * (product in low) + 0.5 * feature_hit - min(1.0, 0.5 * off)
  grams = [" ".join(low[i:i + cfg.repetition_n]) for i in range(n - cfg.repetition_n + 1)]
  repetition = (len(set(grams)) / len(grams) - 1.0) if grams else 0.0
  words = sum(t.isalpha() for t in toks)
  length = -np.clip((words - cfg.comfortable_words) / cfg.length_slope_words, 0.0, 1.0)
  ending = 0.0 if text.rstrip().endswith(".") else -1.0
  ok, units = grammatical_units
  comps = {"sentiment": sentiment, "relevance": relevance, "grammar": ok / units - 1.0,
           "repetition": repetition, "length": length, "ending": ending}
  total = sum(getattr(cfg, f"w_{c}") * v for c, v in comps.items())
  return total, comps


def _perturbed_corpus(seed=0, num=120):
  """Responses with a KNOWN number of grammatical units (by construction)."""
  rng = np.random.default_rng(seed)
  s = sampler_lib.ReviewSampler()
  products = list(lexicon.PRODUCTS)
  prompts, responses, units, meta = [], [], [], []
  for i in range(num):
    product = products[i % len(products)]
    aspect = lexicon.PRODUCTS[product][i % 5] if i % 2 else None
    prompt = (f"Write a review of the {product} that mentions the {aspect}." if aspect
              else f"Review of the {product}:")
    sentences = [list(x) for x in s.sample(product, aspect, rng).sentences]
    bad = 0
    kind = i % 6
    if kind == 1:  # unknown word inside a sentence
      j = int(rng.integers(len(sentences)))
      sentences[j].insert(int(rng.integers(len(sentences[j]))), "zzz")
      bad = 1
    elif kind == 2:  # duplicated sentences (repetition)
      sentences = sentences + sentences[:2]
    elif kind == 3:  # long review (length)
      sentences = sentences + [list(x) for x in s.sample(product, None, rng).sentences] * 2
    elif kind == 4:  # off-topic mention of another product
      sentences.append(["the", products[(i + 1) % len(products)], "is", "good", "."])
    text = grammar.render(sentences)
    if kind == 5:  # truncated: no final period
      text = text[:-1]
      bad = 1
    prompts.append(prompt)
    responses.append(text)
    units.append((len(sentences) - bad, len(sentences)))
    meta.append((product, aspect))
  return prompts, responses, units, meta


_CUSTOM = gold.GoldConfig(w_sentiment=1.3, w_relevance=0.7, w_grammar=1.1, w_repetition=0.9,
                          w_length=1.7, w_ending=0.3, sentiment_scale=1.5, repeat_decay=0.7,
                          negation_factor=-0.8, repetition_n=2, comfortable_words=30,
                          length_slope_words=25)


@pytest.mark.parametrize("cfg", [gold.GoldConfig(), _CUSTOM])
def test_gold_matches_numpy_reference(cfg):
  prompts, responses, units, meta = _perturbed_corpus()
  got = gold.gold_reward(prompts, responses, cfg)
  for i, ((product, aspect), text) in enumerate(zip(meta, responses)):
    total, comps = _reference(product, aspect, text, units[i], cfg)
    for c, v in comps.items():
      assert getattr(got, c)[i] == pytest.approx(v, abs=1e-12), (c, text)
    assert got.total[i] == pytest.approx(total, abs=1e-12)
  lo, hi = cfg.total_range()
  assert np.all(got.total >= lo) and np.all(got.total <= hi)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(gold.GoldConfig)])
def test_every_hyperparameter_changes_the_answer(field):
  prompts, responses, _, _ = _perturbed_corpus(num=60)
  base = gold.gold_reward(prompts, responses, _CUSTOM).total
  value = getattr(_CUSTOM, field)
  changed = dataclasses.replace(_CUSTOM, **{field: value + 1 if isinstance(value, int)
                                            else value * 1.5})
  assert not np.allclose(gold.gold_reward(prompts, responses, changed).total, base)


def test_parse_prompt_and_errors():
  assert gold.parse_prompt("How is the lid of the kettle?") == ("kettle", "lid")
  assert gold.parse_prompt("<user> Review of the LAMP: </user>") == ("lamp", None)
  with pytest.raises(ValueError, match=r"prompts\[1\].*exactly one product"):
    gold.gold_reward([KETTLE, "Write a poem."], ["It is good.", "It is good."])
  with pytest.raises(ValueError, match="exactly one product"):
    gold.parse_prompt("Compare the kettle and the toaster.")
  with pytest.raises(ValueError, match="feature of its product 'kettle'"):
    gold.parse_prompt("How is the lens of the kettle?")
  with pytest.raises(ValueError, match="2 prompts but 1 responses"):
    gold.gold_reward([KETTLE, KETTLE], ["x"])
  with pytest.raises(TypeError, match=r"responses\[0\] must be str"):
    gold.gold_reward([KETTLE], [None])


def test_metrics_and_speed():
  prompts, responses, _, _ = _perturbed_corpus(num=1000)
  start = time.perf_counter()
  r = gold.gold_reward(prompts, responses)
  elapsed = time.perf_counter() - start
  assert elapsed < 1.0, elapsed  # "1000 responses in well under a second" (about 0.05 s)
  m = r.metrics()
  assert set(m) == {"gold/total", *(f"gold/{c}" for c in gold.COMPONENTS)}
  assert m["gold/total"] == pytest.approx(float(np.mean(r.total)))
  assert r.total.shape == (1000,) and r.total.dtype == np.float64
  assert gold.gold_reward([], []).total.shape == (0,)
