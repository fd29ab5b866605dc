"""Tests of rlhf_jax.data.hh_rlhf: transcript splitting on synthetic records and the real test splits."""
import gzip
import json
import re

import pytest

from rlhf_jax.data import chat, dedup, hh_rlhf, records
from rlhf_jax.data.schemas import Message, PromptExample
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import DataError, ValidationPolicy

U, A = "user", "assistant"
CTX = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke"


def test_split_at_longest_common_prefix():
  chosen = CTX + "\n\nAssistant: Why did the chicken cross the road?"
  rejected = CTX + "\n\nAssistant: Why not."
  prompt, c, r = hh_rlhf.split_transcripts(chosen, rejected)
  assert prompt == CTX + "\n\nAssistant:"
  assert (c, r) == ("Why did the chicken cross the road?", "Why not.")


def test_invented_turns_do_not_move_the_split():
  # The chosen response invents a further Human/Assistant exchange; splitting at the last
  # "\n\nAssistant:" would put part of the response in chosen's prompt.
  chosen = CTX + "\n\nAssistant: Knock knock.\n\nHuman: Who's there?\n\nAssistant: Lettuce."
  rejected = CTX + "\n\nAssistant: No."
  prompt, c, r = hh_rlhf.split_transcripts(chosen, rejected)
  assert prompt == CTX + "\n\nAssistant:"
  assert c == "Knock knock.\n\nHuman: Who's there?\n\nAssistant: Lettuce." and r == "No."
  naive_chosen = chosen[: chosen.rfind("\n\nAssistant:") + len("\n\nAssistant:")]
  assert naive_chosen != prompt


def test_empty_identical_and_shared_response_start():
  prompt, c, r = hh_rlhf.split_transcripts(CTX + "\n\nAssistant: ", CTX + "\n\nAssistant: Sure")
  assert (prompt, c, r) == (CTX + "\n\nAssistant:", "", "Sure")
  same = CTX + "\n\nAssistant: Same"
  assert hh_rlhf.split_transcripts(same, same) == (CTX + "\n\nAssistant:", "Same", "Same")
  # Responses sharing their first words: the LCP backs off to the marker.
  prompt, c, r = hh_rlhf.split_transcripts(CTX + "\n\nAssistant: I think yes",
                                           CTX + "\n\nAssistant: I think no")
  assert (prompt, c, r) == (CTX + "\n\nAssistant:", "I think yes", "I think no")
  with pytest.raises(ValueError, match="no prefix ending"):
    hh_rlhf.split_transcripts("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d")


def test_parse_transcript():
  prompt = ("\n\nHuman: Hi\n\nthere\n\nAssistant: Human: confused\n\nHuman: \n\nAssistant: "
            "ok  \n\nHuman: “bye”\n\nAssistant:")
  assert hh_rlhf.parse_transcript(prompt) == (
      Message(U, "Hi\n\nthere"), Message(A, "Human: confused"), Message(U, ""),
      Message(A, "ok  "), Message(U, "“bye”"))
  assert chat.render_text(hh_rlhf.parse_transcript(prompt)) == prompt  # exact round trip
  with pytest.raises(ValueError, match="must end with"):
    hh_rlhf.parse_transcript("\n\nHuman: Hi")
  with pytest.raises(ValueError, match="must start with"):
    hh_rlhf.parse_transcript("Hi\n\nAssistant:")


def test_ingest_synthetic_file(tmp_path):
  rows = [{"chosen": CTX + "\n\nAssistant: A", "rejected": CTX + "\n\nAssistant: B"},
          {"chosen": CTX + "\n\nAssistant: ", "rejected": CTX + "\n\nAssistant: B"},
          {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: x\n\nAssistant: y"}]
  path = tmp_path / "helpful-base" / "test.jsonl.gz"
  path.parent.mkdir()
  path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
  examples, report = hh_rlhf.read_hh_rlhf(path)
  assert len(examples) == 1 and report.dropped == {"empty_chosen": 1, "identical_responses": 1}
  (e,) = examples
  assert e.prompt == (Message(U, "Hi there"), Message(A, "Hello!"), Message(U, "Tell me a joke"))
  assert (e.chosen, e.rejected) == ("A", "B")
  assert (e.id, e.source) == ("hh-rlhf/helpful-base/test:1", "hh-rlhf/helpful-base/test")
  raw, _ = hh_rlhf.read_hh_rlhf(path, prompt_format="raw")
  assert raw[0].prompt == CTX + "\n\nAssistant:"


@pytest.mark.parametrize("row, field", [
    ({"chosen": "\n\nHuman: x\n\nAssistant: y"}, "rejected"),
    ({"chosen": 1, "rejected": "x"}, "chosen"),
    ({"chosen": "a", "rejected": "b"}, "chosen"),  # no common "\n\nAssistant:"
    ({"chosen": "x", "rejected": "x", "prompt": "p"}, "prompt"),
])
def test_bad_records_name_line_and_field(tmp_path, row, field):
  good = {"chosen": CTX + "\n\nAssistant: A", "rejected": CTX + "\n\nAssistant: B"}
  path = tmp_path / "bad.jsonl"
  path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
  with pytest.raises(DataError, match=re.escape(f"{path}:2: field '{field}'")):
    hh_rlhf.read_hh_rlhf(path)


# Real data (../shared/data/hh-rlhf; skipped visibly when absent). Counts from its README.
SPLITS = {"harmless-base": dict(records=2312, empty_chosen=4, empty_rejected=0, identical=0,
                                naive_split_differs=5, repeated_prompts=2),
          "helpful-base": dict(records=2354, empty_chosen=0, empty_rejected=4, identical=2,
                               naive_split_differs=9, repeated_prompts=0)}


@pytest.mark.parametrize("subset", sorted(SPLITS))
def test_real_test_split(shared_data_dir, testdata_dir, subset):
  path = shared_data_dir / "hh-rlhf" / subset / "test.jsonl.gz"
  want = SPLITS[subset]
  # Keep everything so every record can be checked; the default policy is checked below.
  keep_all = ValidationPolicy(on_empty="drop", on_identical="keep")
  examples, report = hh_rlhf.read_hh_rlhf(path, policy=keep_all)
  raw = list(records.iter_records(path))
  assert report.records_read == len(raw) == want["records"]
  assert report.dropped.get("empty_chosen", 0) == want["empty_chosen"]
  assert report.dropped.get("empty_rejected", 0) == want["empty_rejected"]
  assert sum(e.chosen == e.rejected for e in examples) == want["identical"]

  naive_differs = 0
  prompts = []
  by_line = {int(e.id.rsplit(":", 1)[1]): e for e in examples}
  for line, rec in raw:
    prompt, chosen, rejected = hh_rlhf.split_transcripts(rec["chosen"], rec["rejected"])
    # The LCP prompt is shared by both sides and ends at an Assistant marker.
    assert rec["chosen"].startswith(prompt) and rec["rejected"].startswith(prompt)
    assert prompt.endswith("\n\nAssistant:") and prompt.startswith("\n\nHuman: ")
    naive = [s[: s.rfind("\n\nAssistant:")] for s in (rec["chosen"], rec["rejected"])]
    naive_differs += naive[0] != naive[1]
    prompts.append(PromptExample(prompt=hh_rlhf.parse_transcript(prompt), id=str(line)))
    if line in by_line:
      e = by_line[line]
      assert (e.chosen, e.rejected) == (chosen, rejected)
      # Parsed turns render back to the exact transcripts.
      assert chat.render_text(e.prompt, e.chosen) == rec["chosen"]
      assert chat.render_text(e.prompt, e.rejected) == rec["rejected"]
  assert naive_differs == want["naive_split_differs"]
  assert len(prompts) - len(dedup.dedup_prompts(prompts)) == want["repeated_prompts"]
  assert len(dedup.dedup_pairs(examples, "exact")) == len(examples)  # no duplicate pairs

  examples, report = hh_rlhf.read_hh_rlhf(path)  # default policy: drop empty and identical
  assert report.records_read == want["records"]
  assert report.dropped == {k: v for k, v in {
      "empty_chosen": want["empty_chosen"], "empty_rejected": want["empty_rejected"],
      "identical_responses": want["identical"]}.items() if v}
  assert report.kept == want["records"] - report.num_dropped == len(examples)

  # The chat template's prefix invariant holds on real multi-turn prompts.
  tok = Tokenizer.load(testdata_dir / "tokenizer_512.model")
  for e in examples[:25]:
    full = chat.render(tok, e.prompt, e.chosen)
    assert full.ids[:full.prompt_len] == chat.render_prompt(tok, e.prompt)
    assert full.ids.count(tok.bos_id) == 1
    assert tok.decode([i for i in full.ids if i != tok.eos_id]) == chat.render_text(e.prompt, e.chosen)
