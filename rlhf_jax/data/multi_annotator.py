"""Multi-annotator pairwise comparisons: ingestion and aggregation into preferences.

Two row layouts are accepted (JSON or JSONL, plain or gzip), and may be mixed:

  one label per row   {"item_id", "prompt", "response_a", "response_b", "annotator_id",
                       "label": "a" | "b" | "tie", "metadata"?}
  labels per item     {"item_id", "prompt", "response_a", "response_b",
                       "labels": [{"annotator_id": ..., "label": ...}, ...]
                                 | ["a", "tie", ...] with optional "annotator_ids": [...]}

Anonymous labels (a bare list without "annotator_ids") get the ids "<item_id>/<k>", unique per item
so they are never conflated across items. Rows of one item must agree on prompt and responses
(else DataError naming both lines); a second label by the same annotator for the same item is
dropped and counted as "duplicate_annotation". `IngestionReport.records_read` counts labels.

Aggregation (`aggregate_comparisons`) turns an item's labels into one PreferenceExample by
majority vote or by Dawid-Skene EM (expectation-maximisation over annotator confusion matrices),
with `confidence` set to the probability of the chosen label. It reaches the batches as
`PreferenceBatch.confidence_B`, which the reward-model step multiplies into the pair weights
(`algorithms.reward_model`, use_confidence=True). `weight` is left unset (1) so that nothing
counts the posterior twice; it is for weights given in the data.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np

from rlhf_jax.data import annotators, records
from rlhf_jax.data.ingest import DEFAULT_POLICY, default_source
from rlhf_jax.data.schemas import LABELS, Comparison, PreferenceExample, SchemaError
from rlhf_jax.data.schemas import prompt_from_json
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import DataError, IngestionReport, ValidationPolicy, apply_policy

_ITEM_FIELDS = ("item_id", "prompt", "response_a", "response_b", "metadata")


def _labels_of(record: Mapping[str, Any], item_id: str) -> list[tuple[Any, Any]]:
  """(annotator_id, label) pairs of one row."""
  if "label" in record:
    if "labels" in record:
      raise SchemaError("labels", "give 'label' (one per row) or 'labels' (list), not both")
    if "annotator_id" not in record:
      raise SchemaError("annotator_id", "missing required field")
    return [(record["annotator_id"], record["label"])]
  if "labels" not in record:
    raise SchemaError("label", "missing required field (or give a 'labels' list)")
  labels = record["labels"]
  if not isinstance(labels, list) or not labels:
    raise SchemaError("labels", "expected a non-empty list")
  if all(isinstance(x, Mapping) for x in labels):
    out = []
    for k, x in enumerate(labels):
      for key in ("annotator_id", "label"):
        if key not in x:
          raise SchemaError(f"labels[{k}].{key}", "missing required field")
      out.append((x["annotator_id"], x["label"]))
    return out
  ids = record.get("annotator_ids")
  if ids is None:
    ids = [f"{item_id}/{k}" for k in range(len(labels))]
  elif not isinstance(ids, list) or len(ids) != len(labels):
    raise SchemaError("annotator_ids", f"expected a list as long as 'labels' ({len(labels)})")
  return list(zip(ids, labels))


def iter_comparisons(path: str | os.PathLike, report: IngestionReport, *,
                     policy: ValidationPolicy = DEFAULT_POLICY, tokenizer: Tokenizer | None = None,
                     source: str | None = None) -> Iterator[Comparison]:
  """Streams one Comparison per label. The policy applies to each item's texts.

  Empty and over-long texts follow the policy; identical responses are dropped or rejected as the
  policy says ("keep" keeps them, they can still carry "tie" labels).
  """
  source = source or default_source(path)
  report.source = report.source or str(path)
  items: dict[str, tuple[int, tuple]] = {}  # item_id -> (first line, (prompt, a, b))
  seen: set[tuple[str, str]] = set()
  for line, record in records.iter_records(path):
    try:
      if "item_id" not in record:
        raise SchemaError("item_id", "missing required field")
      item_id = record["item_id"]
      if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise SchemaError("item_id", f"expected str (or int), got {type(item_id).__name__}")
      item_id = str(item_id)
      pairs = _labels_of(record, item_id)
      report.records_read += len(pairs)
      for k in ("prompt", "response_a", "response_b"):
        if k not in record:
          raise SchemaError(k, "missing required field")
      content = (prompt_from_json("prompt", record["prompt"]), record["response_a"],
                 record["response_b"])
      extra = sorted(set(record) - set(_ITEM_FIELDS) -
                     {"label", "labels", "annotator_id", "annotator_ids"})
      if extra:
        raise SchemaError(extra[0], "unknown field in a comparison row")
      comparisons = [Comparison(item_id=item_id, prompt=content[0], response_a=content[1],
                                response_b=content[2], annotator_id=a, label=lab,
                                metadata=record.get("metadata", {})) for a, lab in pairs]
    except SchemaError as e:
      raise DataError(path, str(e), line=line, field=e.field) from None
    if item_id in items and items[item_id][1] != content:
      raise DataError(path, f"item {item_id!r} has a different prompt or responses than on line "
                      f"{items[item_id][0]}", line=line, field="item_id")
    items.setdefault(item_id, (line, content))
    for c in comparisons:
      if (c.item_id, c.annotator_id) in seen:
        report.drop("duplicate_annotation", line,
                    f"annotator {c.annotator_id!r}, item {c.item_id!r}")
        continue
      checked = apply_policy(c, policy, report, line=line, path=path, tokenizer=tokenizer)
      if checked is None:
        continue
      seen.add((c.item_id, c.annotator_id))
      report.kept += 1
      yield checked


def read_comparisons(path: str | os.PathLike, **kwargs
                     ) -> tuple[list[Comparison], IngestionReport]:
  """All Comparisons of a file and the report."""
  report = IngestionReport()
  return list(iter_comparisons(path, report, **kwargs)), report


def comparison_to_preference(c: Comparison) -> PreferenceExample:
  """One annotator's label as a PreferenceExample (a "tie" label gives `tie=True`, a first)."""
  a_first = c.label in ("a", "tie")
  return PreferenceExample(
      prompt=c.prompt, chosen=c.response_a if a_first else c.response_b,
      rejected=c.response_b if a_first else c.response_a, id=f"{c.item_id}/{c.annotator_id}",
      annotator_id=c.annotator_id, tie=c.label == "tie", metadata=dict(c.metadata))


@dataclasses.dataclass(frozen=True)
class Votes:
  a: int = 0
  b: int = 0
  tie: int = 0

  @property
  def total(self) -> int:
    return self.a + self.b + self.tie


def _dawid_skene_posteriors(comparisons: Sequence[Comparison], item_ids: Sequence[str],
                            **ds_options: float) -> np.ndarray:
  """posterior_IxY over (a, b, tie) for `item_ids` (in that order), by Dawid-Skene EM."""
  item_index = {item_id: i for i, item_id in enumerate(item_ids)}
  annotator_index: dict[str, int] = {}
  for c in comparisons:
    annotator_index.setdefault(c.annotator_id, len(annotator_index))
  ann = annotators.validate_annotations(
      [item_index[c.item_id] for c in comparisons],
      [annotator_index[c.annotator_id] for c in comparisons],
      [LABELS.index(c.label) for c in comparisons], num_classes=len(LABELS),
      num_items=len(item_ids), num_annotators=len(annotator_index))
  return annotators.dawid_skene(ann, **ds_options).posterior_IxY


def aggregate_comparisons(comparisons: Sequence[Comparison], *,
                          method: Literal["majority", "dawid_skene"] = "majority",
                          min_votes: int = 1, on_tie: Literal["tie", "drop"] = "tie",
                          report: IngestionReport | None = None,
                          confusion_smoothing: float = 0.01,
                          prior_smoothing: float = 0.01) -> list[PreferenceExample]:
  """One PreferenceExample per item, in first-seen order, with its confidence.

  method="majority": the winner is the response with more "a"/"b" votes ("tie" votes count for
  neither); `confidence` = winner votes / all votes of the item. Equal a/b votes make a tie.

  method="dawid_skene": labels of all items are fitted jointly with the Dawid-Skene model
  (`annotators.dawid_skene` over the classes a, b, tie), which learns how reliable each annotator
  is. The winner is the class with the largest posterior probability; `confidence` is that
  probability; a tie is an item whose most probable class is "tie" or whose a and b posteriors
  are equal. `metadata["posterior"]` keeps {a, b, tie}. The smoothing arguments go to the EM.

  Either way `metadata["votes"]` keeps the raw counts, and `weight` stays unset: a reward-model
  loss weighted by confidence (see the module docstring) counts uncertain items less, and a
  weight equal to the confidence would count it twice. A tie example has `tie=True` and
  response_a first, or is dropped (`on_tie="drop"`). Items with fewer than `min_votes` labels
  are dropped. Drops are counted in `report` ("aggregate_tie", "aggregate_min_votes") when one
  is given; the report then counts items, not labels.

  Example:
    labels a, a, b on one item, majority -> chosen = response_a, confidence = 2/3.
  """
  if on_tie not in ("tie", "drop"):
    raise ValueError(f"on_tie must be 'tie' or 'drop', got {on_tie!r}")
  if method not in ("majority", "dawid_skene"):
    raise ValueError(f"method must be 'majority' or 'dawid_skene', got {method!r}")
  votes: dict[str, collections.Counter] = {}
  first: dict[str, Comparison] = {}
  for c in comparisons:
    f = first.get(c.item_id)
    if f is not None and (f.prompt, f.response_a, f.response_b) != (c.prompt, c.response_a,
                                                                    c.response_b):
      raise ValueError(f"item {c.item_id!r} appears with different prompt or responses")
    first.setdefault(c.item_id, c)
    votes.setdefault(c.item_id, collections.Counter())[c.label] += 1
  posterior_IxY = None
  if method == "dawid_skene" and first:
    posterior_IxY = _dawid_skene_posteriors(comparisons, list(first),
                                            confusion_smoothing=confusion_smoothing,
                                            prior_smoothing=prior_smoothing)
  out = []
  for i, (item_id, c) in enumerate(first.items()):
    v = Votes(**votes[item_id])
    extra = {}
    if posterior_IxY is None:
      tie = v.a == v.b
      a_wins = v.a >= v.b
      confidence = 0.5 if tie else max(v.a, v.b) / v.total
    else:
      p_a, p_b, p_tie = (float(x) for x in posterior_IxY[i])
      tie = p_tie > max(p_a, p_b) or p_a == p_b
      a_wins = p_a >= p_b
      confidence = max(p_a, p_b, p_tie)
      extra = {"posterior": {"a": p_a, "b": p_b, "tie": p_tie}}
    if report is not None:
      report.records_read += 1
    if v.total < min_votes:
      if report is not None:
        report.drop("aggregate_min_votes", None, f"item {item_id!r}: {v.total} votes")
      continue
    if tie and on_tie == "drop":
      if report is not None:
        report.drop("aggregate_tie", None, f"item {item_id!r}")
      continue
    out.append(PreferenceExample(
        prompt=c.prompt, chosen=c.response_a if a_wins else c.response_b,
        rejected=c.response_b if a_wins else c.response_a, id=item_id, tie=tie,
        confidence=confidence,
        metadata={**c.metadata, "votes": dataclasses.asdict(v), **extra}))
    if report is not None:
      report.kept += 1
  return out


def iter_aggregated_preferences(path: str | os.PathLike, report: IngestionReport, *,
                                policy: ValidationPolicy = DEFAULT_POLICY,
                                tokenizer: Tokenizer | None = None, source: str | None = None,
                                method: Literal["majority", "dawid_skene"] = "dawid_skene",
                                min_votes: int = 1, on_tie: Literal["tie", "drop"] = "tie"
                                ) -> Iterator[PreferenceExample]:
  """Reads a comparisons file and yields its aggregated preferences (a `prepare` reader).

  The whole file is read first (aggregation needs every label). `report` counts LABELS so that
  `records_read == kept + dropped` still holds: a kept item counts one kept label and its other
  labels as "merged_into_item"; the labels of a dropped item count as "aggregate_min_votes" or
  "aggregate_tie". Each example's `source` is the file's (see `ingest.default_source`).
  """
  source = source or default_source(path)
  comparisons = list(iter_comparisons(path, report, policy=policy, tokenizer=tokenizer,
                                      source=source))
  examples = aggregate_comparisons(comparisons, method=method, min_votes=min_votes,
                                   on_tie=on_tie)
  labels_per_item = collections.Counter(c.item_id for c in comparisons)
  kept_items = {e.id for e in examples}
  for item_id, n in labels_per_item.items():
    if item_id in kept_items:
      report.remove_kept("merged_into_item", n - 1)
    else:
      report.remove_kept("aggregate_min_votes" if n < min_votes else "aggregate_tie", n)
  for example in examples:
    yield dataclasses.replace(example, source=source)
