"""Tests of rlhf_jax.data.validation: policies, truncation and the ingestion report."""
import re

import pytest

from rlhf_jax.data.schemas import Comparison, Message, PreferenceExample, PromptExample, SFTExample
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import DataError, IngestionReport, ValidationPolicy, apply_policy

U, A = "user", "assistant"


@pytest.fixture(scope="module")
def tok(testdata_dir):
  return Tokenizer.load(testdata_dir / "tokenizer_512.model")


def _pref(prompt="What is up?", chosen="Not much.", rejected="Everything!"):
  return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, id="x")


def _apply(ex, line=7, tokenizer=None, **policy):
  report = IngestionReport(source="f.jsonl")
  out = apply_policy(ex, ValidationPolicy(**policy), report, line=line, path="f.jsonl",
                     tokenizer=tokenizer)
  return out, report


def test_valid_example_passes_unchanged():
  ex = _pref()
  out, report = _apply(ex, max_prompt_chars=100, max_response_chars=100)
  assert out is ex and report.dropped == {} and report.warnings == []


@pytest.mark.parametrize("ex, reason", [
    (_pref(prompt="  \n"), "empty_prompt"),
    (_pref(prompt=(Message(U, ""), Message(A, " "))), "empty_prompt"),
    (_pref(chosen=""), "empty_chosen"),
    (_pref(rejected="\t"), "empty_rejected"),
    (SFTExample(prompt="q", response=" ", id="s"), "empty_response"),
    (PromptExample(prompt="", id="p"), "empty_prompt"),
    (Comparison(item_id="i", prompt="q", response_a="", response_b="b", annotator_id="w",
                label="a"), "empty_response_a"),
])
def test_empty(ex, reason):
  out, report = _apply(ex)
  assert out is None and report.dropped == {reason: 1}
  assert report.warnings == [f"f.jsonl:7: dropped ({reason})"]
  field = reason.removeprefix("empty_")
  with pytest.raises(DataError, match=re.escape(f"f.jsonl:7: empty {field}")) as info:
    _apply(ex, on_empty="error")
  assert info.value.field == field and info.value.line == 7


def test_identical():
  ex = _pref(chosen="same", rejected="same")
  out, report = _apply(ex)
  assert out is None and report.dropped == {"identical_responses": 1}
  out, report = _apply(ex, on_identical="keep")
  assert out is ex and report.dropped == {} and "identical" in report.warnings[0]
  with pytest.raises(DataError, match="f.jsonl:7: chosen and rejected are identical"):
    _apply(ex, on_identical="error")
  # Responses differing only in whitespace are not identical (exact comparison).
  assert _apply(_pref(chosen="same", rejected="same "))[0] is not None


def test_too_long_by_characters():
  ex = _pref(prompt="0123456789", chosen="abcdefgh", rejected="xyz")
  out, report = _apply(ex, max_prompt_chars=5)
  assert out is None and report.dropped == {"too_long_prompt": 1}
  assert "10 chars (max 5)" in report.warnings[0]
  out, report = _apply(ex, max_response_chars=4)
  assert out is None and report.dropped == {"too_long_chosen": 1}
  with pytest.raises(DataError, match=r"f.jsonl:7: chosen too long: 8 chars \(max 4\)"):
    _apply(ex, max_response_chars=4, on_too_long="error")
  out, report = _apply(ex, max_prompt_chars=5, max_response_chars=4, on_too_long="truncate")
  # The prompt keeps its end (most recent context); responses keep their start.
  assert (out.prompt, out.chosen, out.rejected) == ("56789", "abcd", "xyz")
  assert report.truncated == {"prompt": 1, "chosen": 1} and report.dropped == {}


def test_truncating_a_conversation_drops_leading_turns_first():
  conv = (Message(U, "aaaa"), Message(A, "bbbb"), Message(U, "cccc"))
  out, _ = _apply(_pref(prompt=conv), max_prompt_chars=9, on_too_long="truncate")
  assert out.prompt == (Message(A, "bbbb"), Message(U, "cccc"))
  out, _ = _apply(_pref(prompt=conv), max_prompt_chars=7, on_too_long="truncate")
  assert out.prompt == (Message(U, "cccc"),)  # whole turns go before any turn is cut
  out, _ = _apply(_pref(prompt=conv), max_prompt_chars=3, on_too_long="truncate")
  assert out.prompt == (Message(U, "ccc"),)


def test_truncation_can_make_responses_identical():
  ex = _pref(chosen="shared prefix A", rejected="shared prefix B")
  out, report = _apply(ex, max_response_chars=6, on_too_long="truncate")
  assert out is None and report.dropped == {"identical_responses": 1}
  assert report.truncated == {"chosen": 1, "rejected": 1}


def test_token_limits(tok):
  prompt = "The cat likes the book quickly. " * 4
  chosen = "Sure, here is what I know. " * 5
  ex = _pref(prompt=prompt, chosen=chosen)
  n_prompt, n_chosen = len(tok.encode(prompt)), len(tok.encode(chosen))
  # Token limits are ignored without a tokenizer.
  assert _apply(ex, max_prompt_tokens=3)[0] is ex
  out, report = _apply(ex, tokenizer=tok, max_prompt_tokens=n_prompt - 1)
  assert out is None and report.dropped == {"too_long_prompt": 1}
  assert f"{n_prompt} tokens (max {n_prompt - 1})" in report.warnings[0]
  assert _apply(ex, tokenizer=tok, max_prompt_tokens=n_prompt, max_response_tokens=n_chosen)[0] is ex
  assert n_prompt > 10 and n_chosen > 10
  for limit in (1, 5, 10):
    out, report = _apply(ex, tokenizer=tok, max_prompt_tokens=limit, max_response_tokens=limit,
                         on_too_long="truncate")
    assert len(tok.encode(out.prompt)) <= limit and len(tok.encode(out.chosen)) <= limit
    assert prompt.endswith(out.prompt) and chosen.startswith(out.chosen)
    # Longest fitting: one more character would not fit.
    longer_prompt = prompt[len(prompt) - len(out.prompt) - 1:]
    assert len(tok.encode(longer_prompt)) > limit
    assert len(tok.encode(chosen[:len(out.chosen) + 1])) > limit
    rejected_cut = len(tok.encode(ex.rejected)) > limit
    assert report.truncated == {"prompt": 1, "chosen": 1, **({"rejected": 1} if rejected_cut else {})}


def test_policy_values_are_checked():
  with pytest.raises(ValueError, match="on_identical"):
    ValidationPolicy(on_identical="ignore")
  with pytest.raises(ValueError, match="on_too_long"):
    ValidationPolicy(on_too_long="cut")
  with pytest.raises(ValueError, match="max_prompt_tokens"):
    ValidationPolicy(max_prompt_tokens=0)
  with pytest.raises(ValueError, match="max_response_chars"):
    ValidationPolicy(max_response_chars=2.5)


def test_report_summary_dict_and_merge():
  r1 = IngestionReport(source="a.jsonl", records_read=5, kept=3)
  r1.drop("empty_chosen", 2)
  r1.drop("identical_responses", 4)
  r1.truncate("prompt", 5)
  r2 = IngestionReport(source="b.jsonl", records_read=2, kept=1)
  r2.drop("empty_chosen", 1)
  r1.remove_kept("duplicate_exact", 1)
  assert r1.records_read == r1.kept + r1.num_dropped
  d = r1.to_dict()
  assert d["dropped"] == {"duplicate_exact": 1, "empty_chosen": 1, "identical_responses": 1}
  assert d["truncated"] == {"prompt": 1}
  assert d["warnings"][0] == "a.jsonl:2: dropped (empty_chosen)"
  s = r1.summary()
  assert "read 5, kept 2, dropped 3" in s and "identical_responses: 1" in s and "a.jsonl:4" in s
  merged = IngestionReport.merge([r1, r2])
  assert (merged.records_read, merged.kept, merged.dropped["empty_chosen"]) == (7, 3, 2)
  assert merged.source == "a.jsonl+b.jsonl"
  with pytest.raises(ValueError, match="only 2 kept"):
    r1.remove_kept("x", 3)


def test_warnings_are_capped_but_counted():
  r = IngestionReport(source="s", max_warnings=3)
  for i in range(10):
    r.warn("w", i)
  assert len(r.warnings) == 3 and r.warnings_omitted == 7
  assert "warnings: 10 (first 3 kept)" in r.summary()
