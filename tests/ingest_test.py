"""Tests of rlhf_jax.data.ingest: preference / SFT / prompt layouts and their errors."""
import gzip
import json
import re

import pytest

from rlhf_jax.data import ingest, records
from rlhf_jax.data.schemas import Message
from rlhf_jax.data.validation import DataError, IngestionReport, ValidationPolicy

U, A, S = "user", "assistant", "system"


def _write(path, rows, *, compress=False, as_array=False):
  if as_array:
    data = ("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n").encode()
  else:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
  path.write_bytes(gzip.compress(data) if compress else data)
  return path


def _msgs(*pairs):
  return [{"role": r, "content": c} for r, c in pairs]


@pytest.mark.parametrize("compress, as_array", [(False, False), (True, False), (False, True),
                                                (True, True)])
def test_plain_text_preferences(tmp_path, compress, as_array):
  rows = [{"prompt": "Q1", "chosen": "good", "rejected": "bad"},
          {"prompt": "Q2", "chosen": "yes", "rejected": "no", "id": "custom", "tie": True,
           "confidence": 0.6, "margin": 1.5, "weight": 0.25, "annotator_id": "w1",
           "metadata": {"model": "m"}}]
  path = _write(tmp_path / "prefs.data", rows, compress=compress, as_array=as_array)
  examples, report = ingest.read_preferences(path)
  assert [(e.prompt, e.chosen, e.rejected) for e in examples] == [("Q1", "good", "bad"),
                                                                  ("Q2", "yes", "no")]
  first_line = 2 if as_array else 1
  assert examples[0].id == f"{tmp_path.name}/prefs.data:{first_line}"  # default id: source:line
  assert examples[0].source == f"{tmp_path.name}/prefs.data"
  e = examples[1]
  assert (e.id, e.tie, e.confidence, e.margin, e.weight, e.annotator_id, e.metadata) == (
      "custom", True, 0.6, 1.5, 0.25, "w1", {"model": "m"})
  assert examples[0].weight is None
  assert (report.records_read, report.kept, report.dropped) == (2, 2, {})


def test_conversational_layouts(tmp_path):
  prompt = _msgs((S, "Be nice."), (U, "Hi"))
  rows = [
      # Explicit prompt, responses as one assistant message.
      {"prompt": prompt, "chosen": _msgs((A, "Hello!")), "rejected": _msgs((A, "Go."))},
      # Explicit prompt, responses repeating the prompt (stripped).
      {"prompt": prompt, "chosen": prompt + _msgs((A, "Hello!")),
       "rejected": prompt + _msgs((A, "Go."))},
      # TRL implicit prompt: split at the longest common message prefix.
      {"chosen": prompt + _msgs((A, "Hello!")), "rejected": prompt + _msgs((A, "Go."))},
      # Plain-text prompt with a message response.
      {"prompt": "Hi", "chosen": _msgs((A, "Hello!")), "rejected": "Go."},
  ]
  examples, _ = ingest.read_preferences(_write(tmp_path / "conv.jsonl", rows))
  conv = (Message(S, "Be nice."), Message(U, "Hi"))
  assert [(e.prompt, e.chosen, e.rejected) for e in examples] == [
      (conv, "Hello!", "Go."), (conv, "Hello!", "Go."), (conv, "Hello!", "Go."),
      ("Hi", "Hello!", "Go.")]


def test_implicit_prompt_with_multi_turn_context(tmp_path):
  ctx = _msgs((U, "a"), (A, "b"), (U, "c"))
  rows = [{"chosen": ctx + _msgs((A, "same start")), "rejected": ctx + _msgs((A, "same"))}]
  (e,), _ = ingest.read_preferences(_write(tmp_path / "c.jsonl", rows))
  assert e.prompt == tuple(Message(**m) for m in ctx)
  assert (e.chosen, e.rejected) == ("same start", "same")


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "q", "chosen": "a"}, "rejected", "missing required field"),
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing required field"),
    ({"prompt": "q", "chosen": 7, "rejected": "b"}, "chosen", "expected str or list of messages"),
    ({"prompt": ["q"], "chosen": "a", "rejected": "b"}, "prompt[0]", "expected a JSON object"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "tie": "no"}, "tie", "expected bool"),
    ({"prompt": "q", "chosen": _msgs((A, "x"), (A, "y")), "rejected": "b"}, "chosen",
     "ONE assistant message"),
    ({"prompt": "q", "chosen": _msgs((U, "x")), "rejected": "b"}, "chosen[-1].role",
     "assistant message"),
    ({"chosen": _msgs((U, "q"), (A, "x")), "rejected": _msgs((U, "other"), (A, "y"))}, "chosen",
     "share no leading prompt"),
    ({"chosen": _msgs((U, "q"), (A, "x"), (U, "more"), (A, "z")),
      "rejected": _msgs((U, "q"), (A, "y"))}, "chosen", "ONE assistant message"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "metadata": 3}, "metadata", "JSON object"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "x": 1, "metadata": {"x": 2}}, "x",
     "also a key of 'metadata'"),
])
def test_schema_errors_name_file_line_and_field(tmp_path, row, field, message):
  good = {"prompt": "fine", "chosen": "a", "rejected": "b"}
  path = _write(tmp_path / "bad.jsonl", [good, good, row, good])
  with pytest.raises(DataError, match=re.escape(f"{path}:3: field '{field}'") + f".*{message}") as e:
    ingest.read_preferences(path)
  assert (e.value.line, e.value.field) == (3, field)


def test_unknown_columns_go_to_metadata_with_one_warning(tmp_path):
  rows = [{"prompt": "q", "chosen": "a", "rejected": "b", "score": 1, "lang": "en"},
          {"prompt": "q2", "chosen": "a", "rejected": "b", "score": 2, "metadata": {"m": 1}}]
  examples, report = ingest.read_preferences(_write(tmp_path / "x.jsonl", rows))
  assert examples[0].metadata == {"score": 1, "lang": "en"}
  assert examples[1].metadata == {"m": 1, "score": 2}
  assert len(report.warnings) == 1 and "['lang', 'score']" in report.warnings[0]
  assert report.warnings[0].startswith(f"{tmp_path / 'x.jsonl'}:1:")


def test_policy_applies_during_ingestion(tmp_path):
  rows = [{"prompt": "q", "chosen": "a", "rejected": "a"},
          {"prompt": "q", "chosen": " ", "rejected": "a"},
          {"prompt": "q", "chosen": "ok", "rejected": "fine"}]
  path = _write(tmp_path / "p.jsonl", rows)
  examples, report = ingest.read_preferences(path)
  assert [e.chosen for e in examples] == ["ok"]
  assert report.dropped == {"identical_responses": 1, "empty_chosen": 1}
  assert report.records_read == report.kept + report.num_dropped == 3
  with pytest.raises(DataError, match=re.escape(f"{path}:2:") + ".*empty chosen"):
    ingest.read_preferences(path, policy=ValidationPolicy(on_empty="error"))


def test_sft_layouts_and_errors(tmp_path):
  rows = [{"prompt": "q", "response": "r"},
          {"prompt": "q", "completion": "c", "id": 5},
          {"messages": _msgs((U, "a"), (A, "b"), (U, "c"), (A, "d"))},
          {"prompt": _msgs((U, "a")), "response": _msgs((A, "b"))}]
  examples, report = ingest.read_sft(_write(tmp_path / "sft.jsonl", rows))
  assert [(e.prompt, e.response) for e in examples] == [
      ("q", "r"), ("q", "c"),
      ((Message(U, "a"), Message(A, "b"), Message(U, "c")), "d"), ((Message(U, "a"),), "b")]
  assert examples[1].id == "5" and report.kept == 4
  for row, field in [({"prompt": "q"}, "response"),
                     ({"messages": _msgs((U, "a"), (A, "b")), "prompt": "q"}, "prompt"),
                     ({"prompt": "q", "response": "r", "completion": "c"}, "completion"),
                     ({"messages": "text"}, "messages"),
                     ({"messages": _msgs((U, "a"))}, "messages[0].role")]:
    path = _write(tmp_path / "bad_sft.jsonl", [rows[0], row])
    with pytest.raises(DataError, match=re.escape(f"{path}:2: field '{field}'")):
      ingest.read_sft(path)


def test_prompts(tmp_path):
  rows = [{"prompt": "What is 2+2?", "answer": "4"}, {"prompt": _msgs((U, "hi")), "id": "p"}]
  examples, report = ingest.read_prompts(_write(tmp_path / "prompts.jsonl", rows))
  assert examples[0].metadata == {"answer": "4"} and examples[1].prompt == (Message(U, "hi"),)
  path = _write(tmp_path / "bad_prompts.jsonl", [rows[0], {"question": "x"}])
  with pytest.raises(DataError, match=re.escape(f"{path}:2: field 'prompt': missing required")):
    ingest.read_prompts(path)


def test_streaming_reads_lazily(tmp_path):
  rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 3
  path = tmp_path / "s.jsonl"
  path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b"{broken\n")
  report = IngestionReport()
  it = ingest.iter_preferences(path, report)
  assert next(it).chosen == "a" and report.records_read == 1  # nothing read ahead
  with pytest.raises(DataError, match=":4: malformed JSON"):
    list(it)


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"\n',
     ":2: malformed JSON"),
    (b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n',
     ":2: field 'rejected': missing required field"),
    (b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": 1, "chosen": "a", "rejected": "b"}\n',
     ":2: field 'prompt'"),
    (b"", ": empty file"),
])
def test_errors_leave_no_partial_output(tmp_path, content, message):
  src = tmp_path / "src" / "in.jsonl"
  src.parent.mkdir()
  src.write_bytes(content)
  out = tmp_path / "out" / "prefs.jsonl.gz"
  with pytest.raises(DataError, match=re.escape(str(src)) + re.escape(message)):
    records.write_jsonl(out, ingest.iter_preferences(src, IngestionReport()))
  assert not out.exists()
  assert list(out.parent.iterdir()) == []  # no temp file either


def test_truncated_gzip_leaves_no_partial_output(tmp_path):
  rows = [{"prompt": f"q{i}", "chosen": "a" * 40, "rejected": "b" * 40} for i in range(300)]
  data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
  src = tmp_path / "cut.jsonl.gz"
  src.write_bytes(data[: len(data) * 2 // 3])
  out = tmp_path / "out.jsonl"
  report = IngestionReport()
  with pytest.raises(DataError, match=re.escape(str(src)) + ".*truncated or corrupt gzip"):
    records.write_jsonl(out, ingest.iter_preferences(src, report))
  assert report.records_read > 0  # records were streamed before the damage was found
  assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cut.jsonl.gz"]


def test_default_source():
  assert ingest.default_source("/a/helpful-base/test.jsonl.gz") == "helpful-base/test"
  assert ingest.default_source("x.json") == "x"
