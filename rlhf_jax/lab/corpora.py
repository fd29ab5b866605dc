"""Deterministic corpora of the lab: SFT demonstrations, prompt sets and preference data.

SFT = Supervised Fine-Tuning. Everything is a pure function of a `LabConfig` (sizes and a seed).
Each corpus draws from its own random stream, seeded by (seed, corpus name), so changing one
size never changes another corpus. Records are plain dicts in the layout of
`rlhf_jax.data.schemas` (`X.to_dict()`); `as_examples` turns them into those dataclasses.

Held-out splits are disjoint at the prompt level: every prompt string is assigned to "train" or
"eval" by a seeded hash (`prompt_split`), and each corpus draws only its split's prompts. The
review prompt universe is small (20 products x 4 plain templates + 5 features x 2 aspect
templates, 280 prompts), so its eval split is about 56 prompts; arithmetic prompts are drawn
by rejection until they fall in the requested split.

Default sizes are meant for the `tiny` model (4 layers, d_model 256, vocab 4096) on a 2-core
CPU; `LabConfig.small()` gives test-sized corpora.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Sequence

import numpy as np

from rlhf_jax.lab import annotators as annotators_lib
from rlhf_jax.lab import arithmetic
from rlhf_jax.lab import gold as gold_lib
from rlhf_jax.lab import grammar
from rlhf_jax.lab import lexicon
from rlhf_jax.lab import sampler as sampler_lib

SPLITS = ("train", "eval")
REVIEW_SOURCE = "lab/reviews"
ARITHMETIC_SOURCE = "lab/arithmetic"
REVIEW_TEMPLATES = ("Write a review of the {product}.", "Review of the {product}:",
                    "What do you think of the {product}?", "Share your opinion of the {product}.")
ASPECT_TEMPLATES = ("Write a review of the {product} that mentions the {aspect}.",
                    "How is the {aspect} of the {product}?")


@dataclasses.dataclass(frozen=True)
class LabConfig:
  """Sizes (numbers of records) and seed of every lab corpus."""

  seed: int = 0
  eval_prompt_fraction: float = 0.2  # share of prompt strings held out for the eval split
  num_sft_train: int = 20_000  # review demonstrations from the base distribution
  num_sft_eval: int = 1_000
  num_prompts_train: int = 2_000  # review prompts for RL / best-of-N (drawn with replacement)
  num_prompts_eval: int = 500
  num_preferences_train: int = 10_000  # labelled review pairs (x annotators_per_pair rows)
  num_preferences_eval: int = 1_000
  annotators_per_pair: int = 1  # distinct panel members labelling each pair
  panel: tuple[annotators_lib.SimulatedAnnotator, ...] = annotators_lib.DEFAULT_PANEL
  base: sampler_lib.BaseDistribution = sampler_lib.BaseDistribution()
  gold: gold_lib.GoldConfig = gold_lib.GoldConfig()
  arithmetic_levels: tuple[int, ...] = (1, 2, 3)  # difficulty levels drawn uniformly
  num_arithmetic_sft_train: int = 20_000
  num_arithmetic_sft_eval: int = 1_000
  num_arithmetic_prompts_train: int = 2_000
  num_arithmetic_prompts_eval: int = 500

  @classmethod
  def small(cls, seed: int = 0, num: int = 16) -> "LabConfig":
    """Every corpus with `num` records (tests, smoke runs)."""
    sizes = {f.name: num for f in dataclasses.fields(cls) if f.name.startswith("num_")}
    return cls(seed=seed, **sizes)

  def validate(self) -> "LabConfig":
    for f in dataclasses.fields(self):
      if f.name.startswith("num_") and getattr(self, f.name) < 0:
        raise ValueError(f"lab.{f.name} must be >= 0, got {getattr(self, f.name)}")
    if not 0.0 < self.eval_prompt_fraction < 1.0:
      raise ValueError(f"lab.eval_prompt_fraction must lie in (0, 1), got "
                       f"{self.eval_prompt_fraction}")
    for level in self.arithmetic_levels:
      if level not in arithmetic.LEVELS:
        raise ValueError(f"lab.arithmetic_levels: {level!r} is not one of {arithmetic.LEVELS}")
    if not self.arithmetic_levels:
      raise ValueError("lab.arithmetic_levels must not be empty")
    self.base.validate()
    if not 1 <= self.annotators_per_pair <= len(self.panel):
      raise ValueError(f"lab.annotators_per_pair must lie in [1, {len(self.panel)}], got "
                       f"{self.annotators_per_pair}")
    return self


def stream(seed: int, name: str) -> np.random.Generator:
  """The random stream of corpus `name` (independent of every other corpus)."""
  key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
  return np.random.default_rng([seed, key])


def prompt_split(prompt: str, seed: int, eval_fraction: float) -> str:
  """"train" or "eval" for a prompt string, from a seeded hash (stable across processes)."""
  digest = hashlib.blake2b(f"{seed}\x00{prompt}".encode(), digest_size=8).digest()
  return "eval" if int.from_bytes(digest, "big") / 2.0**64 < eval_fraction else "train"


def review_prompt_universe() -> list[tuple[str, str, str | None]]:
  """Every review prompt as (prompt, product, aspect or None), in a fixed order."""
  out = []
  for product, features in lexicon.PRODUCTS.items():
    out += [(t.format(product=product), product, None) for t in REVIEW_TEMPLATES]
    out += [(t.format(product=product, aspect=f), product, f)
            for t in ASPECT_TEMPLATES for f in features]
  return out


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _review_prompts_of(config: LabConfig, split: str) -> list[tuple[str, str, str | None]]:
  _check_split(split)
  return [p for p in review_prompt_universe()
          if prompt_split(p[0], config.seed, config.eval_prompt_fraction) == split]


def _size(config: LabConfig, corpus: str, split: str) -> int:
  _check_split(split)
  return getattr(config.validate(), f"num_{corpus}_{split}")


def _draw_review_prompts(config: LabConfig, split: str, num: int, rng: np.random.Generator):
  """Yields `num` (prompt, product, aspect) drawn uniformly from the split, one at a time.

  Drawing per record (interleaved with the caller's own draws) keeps corpora prefix-stable: a
  larger size extends a corpus without changing its first records.
  """
  pool = _review_prompts_of(config, split)
  for _ in range(num):
    yield pool[int(rng.integers(len(pool)))]


def review_prompts(config: LabConfig, split: str) -> list[dict[str, Any]]:
  """Review prompts (PromptExample layout), drawn with replacement from the split's prompts."""
  num = _size(config, "prompts", split)
  drawn = _draw_review_prompts(config, split, num, stream(config.seed, f"review_prompts/{split}"))
  return [{"prompt": p, "id": f"lab-reviews-prompt-{split}-{i:06d}", "source": REVIEW_SOURCE,
           "metadata": {"task": "reviews", "product": product, "aspect": aspect}}
          for i, (p, product, aspect) in enumerate(drawn)]


def review_sft(config: LabConfig, split: str) -> list[dict[str, Any]]:
  """Demonstrations (SFTExample layout): prompts with one base-distribution review each."""
  num = _size(config, "sft", split)
  rng = stream(config.seed, f"review_sft/{split}")
  sampler = sampler_lib.ReviewSampler(config.base)
  out = []
  for i, (p, product, aspect) in enumerate(_draw_review_prompts(config, split, num, rng)):
    review = sampler.sample(product, aspect, rng)
    out.append({"prompt": p, "response": review.text, "id": f"lab-reviews-sft-{split}-{i:06d}",
                "source": REVIEW_SOURCE, "metadata": {"task": "reviews", "product": product,
                                                      "aspect": aspect, "mood": review.mood}})
  return out


def review_pairs(config: LabConfig, split: str) -> tuple[list[str], list[str], list[str]]:
  """(prompts, responses_a, responses_b): two independent base reviews for each prompt."""
  num = _size(config, "preferences", split)
  rng = stream(config.seed, f"review_pairs/{split}")
  sampler = sampler_lib.ReviewSampler(config.base)
  prompts, a, b = [], [], []
  for p, product, aspect in _draw_review_prompts(config, split, num, rng):
    prompts.append(p)
    a.append(sampler.sample(product, aspect, rng).text)
    b.append(sampler.sample(product, aspect, rng).text)
  return prompts, a, b


def review_preferences(config: LabConfig, split: str, gold_labels: bool = False,
                       pairs: tuple[list[str], list[str], list[str]] | None = None
                       ) -> annotators_lib.LabelledPairs:
  """Preference records (PreferenceExample layout) of `review_pairs`, labelled by the panel.

  With `gold_labels=True` the same pairs are labelled by the noise-free `GOLD_ANNOTATOR`
  instead (for evaluating reward models and annotator models against the truth). `pairs`, when
  given, must be `review_pairs(config, split)` (passed to avoid sampling them twice).
  """
  prompts, a, b = review_pairs(config, split) if pairs is None else pairs
  panel = (annotators_lib.GOLD_ANNOTATOR,) if gold_labels else config.panel
  per_pair = 1 if gold_labels else config.annotators_per_pair
  prefix = f"lab-reviews-{'gold' if gold_labels else 'pref'}-{split}"
  return annotators_lib.label_pairs(
      panel, prompts, a, b, stream(config.seed, f"review_labels/{split}"),
      annotators_per_item=per_pair, id_prefix=prefix, source=REVIEW_SOURCE,
      gold_config=config.gold)


def _arithmetic_problems(config: LabConfig, split: str, corpus: str):
  num = _size(config, corpus, split)
  rng = stream(config.seed, f"{corpus}/{split}")
  levels = config.arithmetic_levels
  out = []
  while len(out) < num:
    problem = arithmetic.sample_problem(levels[int(rng.integers(len(levels)))], rng)
    if prompt_split(problem.prompt, config.seed, config.eval_prompt_fraction) == split:
      out.append(problem)
  return out


def arithmetic_sft(config: LabConfig, split: str) -> list[dict[str, Any]]:
  """Arithmetic demonstrations (SFTExample layout): "Compute 23+58=" -> "81"."""
  problems = _arithmetic_problems(config, split, "arithmetic_sft")
  return [{"prompt": q.prompt, "response": str(q.answer), "id": f"lab-arith-sft-{split}-{i:06d}",
           "source": ARITHMETIC_SOURCE,
           "metadata": {"task": "arithmetic", "level": q.level, "answer": q.answer}}
          for i, q in enumerate(problems)]


def arithmetic_prompts(config: LabConfig, split: str) -> list[dict[str, Any]]:
  """Arithmetic prompts (PromptExample layout) for verifiable-reward RL and best-of-N."""
  problems = _arithmetic_problems(config, split, "arithmetic_prompts")
  return [{"prompt": q.prompt, "id": f"lab-arith-prompt-{split}-{i:06d}",
           "source": ARITHMETIC_SOURCE,
           "metadata": {"task": "arithmetic", "level": q.level, "answer": q.answer}}
          for i, q in enumerate(problems)]


def build_corpora(config: LabConfig = LabConfig()) -> dict[str, list[dict[str, Any]]]:
  """Every corpus, keyed "<task>/<corpus>_<split>" (e.g. "reviews/preferences_train")."""
  out: dict[str, list[dict[str, Any]]] = {}
  for split in SPLITS:
    out[f"reviews/sft_{split}"] = review_sft(config, split)
    out[f"reviews/prompts_{split}"] = review_prompts(config, split)
    pairs = review_pairs(config, split)
    out[f"reviews/preferences_{split}"] = review_preferences(config, split, pairs=pairs).records
    if split == "eval":
      out["reviews/preferences_eval_gold"] = review_preferences(
          config, split, gold_labels=True, pairs=pairs).records
    out[f"arithmetic/sft_{split}"] = arithmetic_sft(config, split)
    out[f"arithmetic/prompts_{split}"] = arithmetic_prompts(config, split)
  return out


def as_examples(records: Sequence[dict[str, Any]], kind: str) -> list[Any]:
  """Records -> `rlhf_jax.data.schemas` dataclasses; kind: sft, prompt, preference, comparison."""
  # Imported here: `rlhf_jax.data` pulls in the whole data layer, which the lab does not need.
  from rlhf_jax.data import schemas  # pylint: disable=g-import-not-at-top
  cls = {"sft": schemas.SFTExample, "prompt": schemas.PromptExample,
         "preference": schemas.PreferenceExample, "comparison": schemas.Comparison}.get(kind)
  if cls is None:
    raise ValueError(f"kind must be one of sft, prompt, preference, comparison; got {kind!r}")
  return [cls.from_dict(r) for r in records]


def learnability(config: LabConfig = LabConfig(), num_samples: int = 2_000) -> dict[str, float]:
  """A quick learnability hint for the review language, from `num_samples` base reviews.

  Returns lexicon size, distinct surface words seen, mean/max words per review, the estimated
  entropy of a review given its prompt (nats, and bits per word) and the base gold reward.
  The entropy is the Monte-Carlo estimate E[-log p(x)] + log(acceptance rate of the length
  filter), exact in expectation because the grammar is unambiguous and p(x) sums over moods.
  """
  rng = stream(config.seed, "learnability")
  sampler = sampler_lib.ReviewSampler(config.base)
  drawn = list(_draw_review_prompts(config, "train", num_samples, rng))
  reviews = [sampler.sample(product, aspect, rng) for _, product, aspect in drawn]
  words = np.array([grammar.word_count(r.text) for r in reviews], np.float64)
  acceptance = len(reviews) / sum(r.attempts for r in reviews)
  entropy = -float(np.mean([r.log_prob for r in reviews])) + math.log(acceptance)
  surface = {t for r in reviews for t in grammar.tokenize(r.text) if t[0].isalpha()}
  g = gold_lib.gold_reward([p for p, _, _ in drawn], [r.text for r in reviews], config.gold)
  return {
      "lexicon_words": float(sum(t[0].isalpha() for t in lexicon.WORD_TAG)),
      "distinct_surface_words": float(len(surface)),
      "mean_words": float(words.mean()),
      "max_words": float(words.max()),
      "entropy_nats_per_review": entropy,
      "entropy_bits_per_word": entropy / float(words.mean()) / math.log(2.0),
      "length_filter_acceptance": acceptance,
      "gold_mean": float(g.total.mean()),
      "gold_std": float(g.total.std()),
  }
