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
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Iterator, Literal, Mapping, Sequence

from rlhf_jax.data import records
from rlhf_jax.data.ingest import DEFAULT_POLICY, default_source
from rlhf_jax.data.schemas import Comparison, PreferenceExample, SchemaError, prompt_from_json
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


def aggregate_comparisons(comparisons: Sequence[Comparison], *, min_votes: int = 1,
                          on_tie: Literal["tie", "drop"] = "tie",
                          report: IngestionReport | None = None) -> list[PreferenceExample]:
  """Majority vote per item: one PreferenceExample per item, in first-seen order.

  The winner is the response with more "a"/"b" votes ("tie" votes count for neither).
  `confidence` = winner votes / all votes of the item; `metadata["votes"]` keeps the counts.
  Equal a/b votes give a tie example (`tie=True`, response_a first, confidence = 0.5) or are
  dropped (`on_tie="drop"`). Items with fewer than `min_votes` labels are dropped. Drops are
  counted in `report` ("aggregate_tie", "aggregate_min_votes") when one is given; the report
  then counts items, not labels.

  Example:
    labels a, a, b on one item -> chosen = response_a, confidence = 2/3.
  """
  if on_tie not in ("tie", "drop"):
    raise ValueError(f"on_tie must be 'tie' or 'drop', got {on_tie!r}")
  votes: dict[str, collections.Counter] = {}
  first: dict[str, Comparison] = {}
  for c in comparisons:
    f = first.get(c.item_id)
    if f is not None and (f.prompt, f.response_a, f.response_b) != (c.prompt, c.response_a,
                                                                    c.response_b):
      raise ValueError(f"item {c.item_id!r} appears with different prompt or responses")
    first.setdefault(c.item_id, c)
    votes.setdefault(c.item_id, collections.Counter())[c.label] += 1
  out = []
  for item_id, c in first.items():
    v = Votes(**votes[item_id])
    if report is not None:
      report.records_read += 1
    if v.total < min_votes:
      if report is not None:
        report.drop("aggregate_min_votes", None, f"item {item_id!r}: {v.total} votes")
      continue
    if v.a == v.b and on_tie == "drop":
      if report is not None:
        report.drop("aggregate_tie", None, f"item {item_id!r}")
      continue
    a_wins = v.a >= v.b
    out.append(PreferenceExample(
        prompt=c.prompt, chosen=c.response_a if a_wins else c.response_b,
        rejected=c.response_b if a_wins else c.response_a, id=item_id, tie=v.a == v.b,
        confidence=0.5 if v.a == v.b else max(v.a, v.b) / v.total,
        metadata={**c.metadata, "votes": dataclasses.asdict(v)}))
    if report is not None:
      report.kept += 1
  return out
