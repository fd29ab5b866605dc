"""Simulated annotators: a configurable panel that labels response pairs from the gold reward.

Each annotator labels a pair (a, b), shown in that order, by Bradley-Terry (BT) on the gold
reward g with its own temperature T and optional biases:

  P(a preferred) = sigmoid(s * (g_a - g_b) / T + length_bias * (words_a - words_b) + position_bias)

with s = +1 for kind "bradley_terry" and s = -1 for "adversarial" (the gold term is flipped, the
biases are not). T = 0 is noiseless: the higher gold reward wins, and the biases only break exact
gold ties. Kind "random" is a random clicker: P = 1/2 whatever the pair. With `tie_threshold`
set, a non-random annotator labels the pair a tie whenever |g_a - g_b| < tie_threshold.

Labels use the encoding of `rlhf_jax.data.annotators`: 0 = "a" preferred, 1 = "b" preferred,
2 = tie. Shape letters, extending the house table: I items (pairs), A annotation rows.

`GOLD_ANNOTATOR` gives noise-free "gold preferences" for evaluation (ties only on exactly equal
gold rewards).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import numpy as np

from rlhf_jax.lab import gold as gold_lib
from rlhf_jax.lab import grammar

KINDS = ("bradley_terry", "random", "adversarial")
LABEL_A, LABEL_B, LABEL_TIE = 0, 1, 2
LABEL_NAMES = ("a", "b", "tie")


@dataclasses.dataclass(frozen=True)
class SimulatedAnnotator:
  """One simulated annotator (see the module docstring for the labelling model)."""

  annotator_id: str
  temperature: float = 1.0  # BT temperature on gold-reward differences; 0 = noiseless
  length_bias: float = 0.0  # logit bonus per word that response a is longer than b
  position_bias: float = 0.0  # logit bonus for the first-shown response (a)
  kind: str = "bradley_terry"  # one of KINDS
  tie_threshold: float | None = None  # tie when |g_a - g_b| < tie_threshold (None: no ties)

  def validate(self) -> "SimulatedAnnotator":
    where = f"annotator {self.annotator_id!r}"
    if not isinstance(self.annotator_id, str) or not self.annotator_id:
      raise ValueError(f"annotator_id must be a non-empty str, got {self.annotator_id!r}")
    if self.kind not in KINDS:
      raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
    if not self.temperature >= 0.0:
      raise ValueError(f"{where}: temperature must be >= 0, got {self.temperature}")
    if self.tie_threshold is not None and not self.tie_threshold >= 0.0:
      raise ValueError(f"{where}: tie_threshold must be >= 0 or None, got {self.tie_threshold}")
    return self


GOLD_ANNOTATOR = SimulatedAnnotator("gold", temperature=0.0, tie_threshold=1e-12)

# A realistic default panel: reliabilities from expert to random clicker, two biased annotators.
DEFAULT_PANEL: tuple[SimulatedAnnotator, ...] = (
    SimulatedAnnotator("expert", temperature=0.25),
    SimulatedAnnotator("careful", temperature=0.5),
    SimulatedAnnotator("typical", temperature=1.0),
    SimulatedAnnotator("hasty", temperature=2.0, position_bias=0.5),
    SimulatedAnnotator("length_lover", temperature=1.0, length_bias=0.1),
    SimulatedAnnotator("random_clicker", kind="random"),
)


class PanelLabels(NamedTuple):
  """Annotation rows: which pair, which annotator (index into the panel), label, P(a)."""
  item_A: np.ndarray  # int64 index of the pair
  annotator_A: np.ndarray  # int64 index into the panel
  label_A: np.ndarray  # int64: 0 a preferred, 1 b preferred, 2 tie
  prob_a_A: np.ndarray  # float64 P(a preferred) under the annotator's model (before ties)


def prob_a_preferred(annotator: SimulatedAnnotator, gold_a_I: np.ndarray, gold_b_I: np.ndarray,
                     words_a_I: np.ndarray, words_b_I: np.ndarray) -> np.ndarray:
  """P(annotator prefers a over b) for each pair [I], float64."""
  gold_a_I, gold_b_I = np.asarray(gold_a_I, np.float64), np.asarray(gold_b_I, np.float64)
  words_a_I, words_b_I = np.asarray(words_a_I, np.float64), np.asarray(words_b_I, np.float64)
  if not gold_a_I.shape == gold_b_I.shape == words_a_I.shape == words_b_I.shape:
    raise ValueError(f"gold_a, gold_b, words_a, words_b must share one shape, got "
                     f"{[x.shape for x in (gold_a_I, gold_b_I, words_a_I, words_b_I)]}")
  if annotator.kind == "random":
    return np.full(gold_a_I.shape, 0.5)
  sign = -1.0 if annotator.kind == "adversarial" else 1.0
  diff_I = sign * (gold_a_I - gold_b_I)
  bias_I = annotator.length_bias * (words_a_I - words_b_I) + annotator.position_bias
  if annotator.temperature == 0.0:
    logit_I = np.where(diff_I > 0, np.inf, np.where(diff_I < 0, -np.inf, bias_I))
  else:
    logit_I = diff_I / annotator.temperature + bias_I
  with np.errstate(over="ignore"):
    return 1.0 / (1.0 + np.exp(-logit_I))


def annotate(panel: Sequence[SimulatedAnnotator], gold_a_I: np.ndarray, gold_b_I: np.ndarray,
             words_a_I: np.ndarray, words_b_I: np.ndarray, rng: np.random.Generator,
             annotators_per_item: int = 1) -> PanelLabels:
  """Labels every pair by `annotators_per_item` distinct panel members drawn uniformly.

  Rows are ordered by item, then by draw order. Deterministic given the rng state.
  """
  panel = [a.validate() for a in panel]
  ids = [a.annotator_id for a in panel]
  if len(set(ids)) != len(ids):
    raise ValueError(f"annotator ids must be unique, got {ids}")
  if not 1 <= annotators_per_item <= len(panel):
    raise ValueError(f"annotators_per_item must lie in [1, {len(panel)}] (the panel size), "
                     f"got {annotators_per_item}")
  gold_a_I, gold_b_I = np.asarray(gold_a_I, np.float64), np.asarray(gold_b_I, np.float64)
  words_a_I, words_b_I = np.asarray(words_a_I, np.float64), np.asarray(words_b_I, np.float64)
  num_items = gold_a_I.shape[0]
  who_IxK = np.argsort(rng.random((num_items, len(panel))), axis=1)[:, :annotators_per_item]
  item_A = np.repeat(np.arange(num_items), annotators_per_item)
  annotator_A = who_IxK.reshape(-1)
  uniform_A = rng.random(item_A.shape[0])
  prob_a_A = np.zeros(item_A.shape[0])
  label_A = np.zeros(item_A.shape[0], np.int64)
  for r, annotator in enumerate(panel):
    rows = np.nonzero(annotator_A == r)[0]
    items = item_A[rows]
    p = prob_a_preferred(annotator, gold_a_I[items], gold_b_I[items], words_a_I[items],
                         words_b_I[items])
    prob_a_A[rows] = p
    label = np.where(uniform_A[rows] < p, LABEL_A, LABEL_B)
    if annotator.tie_threshold is not None and annotator.kind != "random":
      tie = np.abs(gold_a_I[items] - gold_b_I[items]) < annotator.tie_threshold
      label = np.where(tie, LABEL_TIE, label)
    label_A[rows] = label
  return PanelLabels(item_A, annotator_A.astype(np.int64), label_A, prob_a_A)


def gold_labels(gold_a_I: np.ndarray, gold_b_I: np.ndarray) -> np.ndarray:
  """Noise-free labels [I]: 0 where g_a > g_b, 1 where g_a < g_b, 2 on exact ties."""
  diff_I = np.asarray(gold_a_I, np.float64) - np.asarray(gold_b_I, np.float64)
  return np.where(diff_I > 0, LABEL_A, np.where(diff_I < 0, LABEL_B, LABEL_TIE)).astype(np.int64)


class LabelledPairs(NamedTuple):
  """Output of `label_pairs`: preference records plus the arrays they were made from."""
  records: list[dict[str, Any]]  # PreferenceExample.to_dict() layout, one per annotation row
  labels: PanelLabels
  gold_a_I: np.ndarray
  gold_b_I: np.ndarray


def label_pairs(panel: Sequence[SimulatedAnnotator], prompts: Sequence[str],
                responses_a: Sequence[str], responses_b: Sequence[str],
                rng: np.random.Generator, *, annotators_per_item: int = 1,
                id_prefix: str = "lab-reviews", source: str = "lab/reviews",
                gold_config: gold_lib.GoldConfig = gold_lib.GoldConfig()) -> LabelledPairs:
  """Scores pairs with the gold reward, has the panel label them, and builds preference records.

  Each record has the fields of `rlhf_jax.data.schemas.PreferenceExample.to_dict()`: prompt,
  chosen, rejected, id, annotator_id, tie (a tie keeps a as `chosen`), confidence and margin
  (None), source and metadata {item, shown_first ("chosen"/"rejected"), gold_chosen,
  gold_rejected, label ("a"/"b"/"tie")}.
  """
  if not len(prompts) == len(responses_a) == len(responses_b):
    raise ValueError(f"prompts, responses_a, responses_b lengths differ: "
                     f"{len(prompts)}, {len(responses_a)}, {len(responses_b)}")
  gold_a_I = gold_lib.gold_reward(prompts, responses_a, gold_config).total
  gold_b_I = gold_lib.gold_reward(prompts, responses_b, gold_config).total
  words_a_I = np.array([grammar.word_count(r) for r in responses_a])
  words_b_I = np.array([grammar.word_count(r) for r in responses_b])
  labels = annotate(panel, gold_a_I, gold_b_I, words_a_I, words_b_I, rng, annotators_per_item)
  records = []
  for item, who, label in zip(labels.item_A.tolist(), labels.annotator_A.tolist(),
                              labels.label_A.tolist()):
    a_first = label != LABEL_B
    responses = (responses_a[item], responses_b[item])
    golds = (float(gold_a_I[item]), float(gold_b_I[item]))
    chosen, rejected = (0, 1) if a_first else (1, 0)
    annotator_id = panel[who].annotator_id
    records.append({
        "prompt": prompts[item], "chosen": responses[chosen], "rejected": responses[rejected],
        "id": f"{id_prefix}-{item:06d}-{annotator_id}", "annotator_id": annotator_id,
        "tie": label == LABEL_TIE, "confidence": None, "margin": None, "source": source,
        "metadata": {"item": item, "shown_first": "chosen" if a_first else "rejected",
                     "gold_chosen": golds[chosen], "gold_rejected": golds[rejected],
                     "label": LABEL_NAMES[label]},
    })
  return LabelledPairs(records, labels, gold_a_I, gold_b_I)


def comparison_records(prompts: Sequence[str], responses_a: Sequence[str],
                       responses_b: Sequence[str], labels: PanelLabels,
                       panel: Sequence[SimulatedAnnotator],
                       id_prefix: str = "lab-reviews") -> list[dict[str, Any]]:
  """Rows in the `rlhf_jax.data.schemas.Comparison.to_dict()` layout (multi-annotator data)."""
  return [{"item_id": f"{id_prefix}-{item:06d}", "prompt": prompts[item],
           "response_a": responses_a[item], "response_b": responses_b[item],
           "annotator_id": panel[who].annotator_id, "label": LABEL_NAMES[label], "metadata": {}}
          for item, who, label in zip(labels.item_A.tolist(), labels.annotator_A.tolist(),
                                      labels.label_A.tolist())]
