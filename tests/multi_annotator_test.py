"""Tests of rlhf_jax.data.multi_annotator."""
import json
import re

import pytest

from rlhf_jax.data import multi_annotator as ma
from rlhf_jax.data.schemas import Comparison, Message
from rlhf_jax.data.validation import DataError, IngestionReport, ValidationPolicy

ITEM = {"prompt": "Which is better?", "response_a": "A text", "response_b": "B text"}


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _c(item_id, label, annotator, a="A text", b="B text"):
  return Comparison(item_id=item_id, prompt="Q", response_a=a, response_b=b,
                    annotator_id=annotator, label=label)


def test_both_layouts(tmp_path):
  rows = [
      {"item_id": "i1", **ITEM, "annotator_id": "w1", "label": "a"},
      {"item_id": "i1", **ITEM, "annotator_id": "w2", "label": "tie"},
      {"item_id": 2, **ITEM, "labels": [{"annotator_id": "w1", "label": "b"},
                                        {"annotator_id": "w3", "label": "b"}]},
      {"item_id": "i3", **ITEM, "labels": ["a", "b", "tie"], "annotator_ids": ["w1", "w2", "w3"]},
      {"item_id": "i4", **ITEM, "prompt": [{"role": "user", "content": "hi"}], "labels": ["b", "b"],
       "metadata": {"task": "t"}},
  ]
  comps, report = ma.read_comparisons(_write(tmp_path / "c.jsonl", rows))
  assert [(c.item_id, c.annotator_id, c.label) for c in comps] == [
      ("i1", "w1", "a"), ("i1", "w2", "tie"), ("2", "w1", "b"), ("2", "w3", "b"),
      ("i3", "w1", "a"), ("i3", "w2", "b"), ("i3", "w3", "tie"),
      ("i4", "i4/0", "b"), ("i4", "i4/1", "b")]  # anonymous labels get per-item ids
  assert comps[-1].prompt == (Message("user", "hi"),) and comps[-1].metadata == {"task": "t"}
  assert (report.records_read, report.kept) == (9, 9)


def test_duplicate_annotations_are_dropped_and_counted(tmp_path):
  rows = [{"item_id": "i1", **ITEM, "annotator_id": "w1", "label": "a"},
          {"item_id": "i1", **ITEM, "annotator_id": "w1", "label": "b"}]
  comps, report = ma.read_comparisons(_write(tmp_path / "c.jsonl", rows))
  assert [c.label for c in comps] == ["a"]
  assert report.dropped == {"duplicate_annotation": 1} and ":2: dropped" in report.warnings[0]
  assert report.records_read == report.kept + report.num_dropped


def test_policy_applies(tmp_path):
  rows = [{"item_id": "i1", **ITEM, "response_b": "A text", "labels": ["tie", "tie"]},
          {"item_id": "i2", **ITEM, "response_a": "", "annotator_id": "w", "label": "b"}]
  path = _write(tmp_path / "c.jsonl", rows)
  comps, report = ma.read_comparisons(path)
  assert comps == [] and report.dropped == {"identical_responses": 2, "empty_response_a": 1}
  comps, _ = ma.read_comparisons(path, policy=ValidationPolicy(on_identical="keep"))
  assert [c.label for c in comps] == ["tie", "tie"]


@pytest.mark.parametrize("row, field, message", [
    ({**ITEM, "annotator_id": "w", "label": "a"}, "item_id", "missing"),
    ({"item_id": "x", **ITEM, "annotator_id": "w", "label": "A"}, "label", "must be one of"),
    ({"item_id": "x", **ITEM, "label": "a"}, "annotator_id", "missing"),
    ({"item_id": "x", **ITEM, "annotator_id": "w"}, "label", "missing"),
    ({"item_id": "x", **ITEM, "labels": []}, "labels", "non-empty list"),
    ({"item_id": "x", **ITEM, "labels": ["a"], "annotator_ids": ["w", "v"]}, "annotator_ids",
     "as long as"),
    ({"item_id": "x", **ITEM, "labels": [{"label": "a"}]}, "labels[0].annotator_id", "missing"),
    ({"item_id": "x", **ITEM, "label": "a", "labels": ["a"], "annotator_id": "w"}, "labels",
     "not both"),
    ({"item_id": {"k": 1}, **ITEM, "annotator_id": "w", "label": "a"}, "item_id", "expected str"),
    ({"item_id": "x", "prompt": "q", "response_a": "a", "annotator_id": "w", "label": "a"},
     "response_b", "missing"),
    ({"item_id": "x", **ITEM, "annotator_id": "w", "label": "a", "score": 3}, "score", "unknown"),
])
def test_errors_name_file_line_and_field(tmp_path, row, field, message):
  good = {"item_id": "g", **ITEM, "annotator_id": "w", "label": "a"}
  path = _write(tmp_path / "bad.jsonl", [good, row])
  with pytest.raises(DataError, match=re.escape(f"{path}:2: field '{field}'") + f".*{message}"):
    ma.read_comparisons(path)


def test_inconsistent_item_is_an_error(tmp_path):
  rows = [{"item_id": "i1", **ITEM, "annotator_id": "w1", "label": "a"},
          {"item_id": "i2", **ITEM, "annotator_id": "w1", "label": "a"},
          {"item_id": "i1", **ITEM, "response_b": "changed", "annotator_id": "w2", "label": "a"}]
  path = _write(tmp_path / "c.jsonl", rows)
  with pytest.raises(DataError, match=re.escape(f"{path}:3: item 'i1'") + ".*than on line 1"):
    ma.read_comparisons(path)


def test_aggregate_majority_confidence_and_ties():
  comps = [_c("x", "a", "w1"), _c("x", "a", "w2"), _c("x", "b", "w3"),  # a wins 2/3
           _c("y", "b", "w1"), _c("y", "tie", "w2"),  # b wins 1/2: tie votes dilute confidence
           _c("z", "a", "w1"), _c("z", "b", "w2"),  # a/b tie
           _c("t", "tie", "w1")]  # only tie votes
  prefs = ma.aggregate_comparisons(comps)
  got = {p.id: (p.chosen, p.rejected, p.tie, p.confidence, p.metadata["votes"]) for p in prefs}
  assert [p.id for p in prefs] == ["x", "y", "z", "t"]
  assert got["x"] == ("A text", "B text", False, pytest.approx(2 / 3), {"a": 2, "b": 1, "tie": 0})
  assert got["y"] == ("B text", "A text", False, 0.5, {"a": 0, "b": 1, "tie": 1})
  assert got["z"] == ("A text", "B text", True, 0.5, {"a": 1, "b": 1, "tie": 0})
  assert got["t"][2] is True
  report = IngestionReport(source="agg")
  prefs = ma.aggregate_comparisons(comps, min_votes=2, on_tie="drop", report=report)
  assert [p.id for p in prefs] == ["x", "y"]
  assert report.dropped == {"aggregate_tie": 1, "aggregate_min_votes": 1}
  assert (report.records_read, report.kept) == (4, 2)
  with pytest.raises(ValueError, match="different prompt or responses"):
    ma.aggregate_comparisons([_c("x", "a", "w1"), _c("x", "a", "w2", b="other")])


def test_comparison_to_preference():
  p = ma.comparison_to_preference(_c("x", "b", "w9"))
  assert (p.chosen, p.rejected, p.annotator_id, p.tie, p.id) == ("B text", "A text", "w9", False, "x/w9")
  assert ma.comparison_to_preference(_c("x", "tie", "w9")).tie


def _adversarial_panel():
  """Items 0-19: 3 accurate + 2 label-flipping annotators (majority right); items 20-29: 1
  accurate + the 2 flippers (majority wrong). Truth alternates a, b."""
  comps, truth = [], {}
  for i in range(30):
    right = "a" if i % 2 == 0 else "b"
    wrong = "b" if right == "a" else "a"
    truth[f"i{i}"] = right
    good = ["g1", "g2", "g3"] if i < 20 else ["g1"]
    comps += [_c(f"i{i}", right, g) for g in good]
    comps += [_c(f"i{i}", wrong, f) for f in ("f1", "f2")]
  return comps, truth


def test_aggregate_dawid_skene_learns_flippers_and_confidence_is_the_posterior():
  comps, truth = _adversarial_panel()
  majority = {p.id: p for p in ma.aggregate_comparisons(comps)}
  ds = {p.id: p for p in ma.aggregate_comparisons(comps, method="dawid_skene")}
  assert list(ds) == [f"i{i}" for i in range(30)]

  def winner(p):
    return "a" if p.chosen == "A text" else "b"

  # Majority gets the last ten items wrong; Dawid-Skene learns that f1, f2 flip labels.
  assert [winner(majority[k]) == truth[k] for k in truth] == [True] * 20 + [False] * 10
  assert all(winner(ds[k]) == truth[k] and not ds[k].tie for k in truth)
  # Independent wiring check: the posterior is that of annotators.dawid_skene on the same labels.
  from rlhf_jax.data import annotators
  ann = annotators.validate_annotations(
      [int(c.item_id[1:]) for c in comps], [["g1", "g2", "g3", "f1", "f2"].index(c.annotator_id)
                                           for c in comps],
      [("a", "b", "tie").index(c.label) for c in comps], num_classes=3)
  posterior = annotators.dawid_skene(ann).posterior_IxY
  for i in range(30):
    p = ds[f"i{i}"]
    got = [p.metadata["posterior"][k] for k in ("a", "b", "tie")]
    # Annotator indices differ (first-seen order) but the posterior does not depend on them.
    assert got == pytest.approx(posterior[i], abs=1e-9)
    assert p.confidence == pytest.approx(posterior[i].max()) and 0.5 < p.confidence <= 1.0
    assert p.weight is None  # left to the data: the confidence must not be counted twice
  # Majority confidences are the vote shares.
  assert majority["i0"].confidence == pytest.approx(3 / 5) and majority["i0"].weight is None
  with pytest.raises(ValueError, match="method must be"):
    ma.aggregate_comparisons(comps, method="mean")


def test_aggregate_dawid_skene_ties():
  comps = [_c("x", "tie", "w1"), _c("x", "tie", "w2"), _c("y", "a", "w1"), _c("y", "a", "w2")]
  got = {p.id: p for p in ma.aggregate_comparisons(comps, method="dawid_skene")}
  assert got["x"].tie and not got["y"].tie and got["y"].chosen == "A text"
  assert got["x"].confidence == pytest.approx(got["x"].metadata["posterior"]["tie"])
  kept = ma.aggregate_comparisons(comps, method="dawid_skene", on_tie="drop")
  assert [p.id for p in kept] == ["y"]


def test_iter_aggregated_preferences_counts_labels(tmp_path):
  rows = [{"item_id": "x", **ITEM, "labels": ["a", "a", "b"]},
          {"item_id": "y", **ITEM, "labels": ["a"]},
          {"item_id": "z", **ITEM, "labels": ["a", "b"]},  # a/b tie under majority
          {"item_id": "e", **ITEM, "response_a": "", "labels": ["a", "b"]}]  # empty: dropped
  path = _write(tmp_path / "c.jsonl", rows)
  report = IngestionReport()
  prefs = list(ma.iter_aggregated_preferences(path, report, method="majority", min_votes=2,
                                              on_tie="drop"))
  assert [p.id for p in prefs] == ["x"] and prefs[0].source == f"{tmp_path.name}/c"
  assert prefs[0].confidence == pytest.approx(2 / 3)
  assert (report.records_read, report.kept) == (8, 1)
  assert report.dropped == {"merged_into_item": 2, "aggregate_min_votes": 1, "aggregate_tie": 2,
                            "empty_response_a": 2}
  assert report.records_read == report.kept + report.num_dropped
