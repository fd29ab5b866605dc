"""Tests of rlhf_jax.data.tokenization: prefix invariant, loss masks, over-long policy, counts."""
import re

import pytest

from rlhf_jax.data import chat, tokenization
from rlhf_jax.data.schemas import Message, PreferenceExample, PromptExample, SFTExample
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import DataError, IngestionReport, ValidationPolicy

CONV = (Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!"),
        Message("user", "Tell me a joke"))


@pytest.fixture(scope="module")
def tok(testdata_dir):
  return Tokenizer.load(testdata_dir / "tokenizer_512.model")


def _text(tok, ids):
  """Text of ids with the EOS tokens between turns removed (what chat.render_text writes)."""
  return tok.decode([i for i in ids if i != tok.eos_id])


def _pairs():
  return [PreferenceExample(CONV, "Why did the chicken cross the road?", "No.", id="conv",
                            weight=0.25, confidence=0.8, margin=1.5, annotator_id="w1",
                            source="unit"),
          PreferenceExample("Plain question?", "A long and careful answer.", "Meh.", id="plain",
                            tie=True)]


def test_preferences_prefix_invariant_and_fields(tok):
  report = IngestionReport()
  records = tokenization.tokenize_preferences(_pairs(), tok, report=report)
  assert (report.records_read, report.kept, report.dropped) == (2, 2, {})
  for ex, r in zip(_pairs(), records):
    assert r["prompt_ids"] + r["chosen_ids"] == chat.render(tok, ex.prompt, ex.chosen).ids
    assert r["prompt_ids"] + r["rejected_ids"] == chat.render(tok, ex.prompt, ex.rejected).ids
    assert r["prompt_ids"] == chat.render_prompt(tok, ex.prompt)
    assert r["prompt_ids"][0] == tok.bos_id
    for side in ("chosen", "rejected"):
      ids = r[f"{side}_ids"]
      assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
      assert tok.decode(ids) == " " + getattr(ex, side)
    # The text field is the rendered prompt, and decoding the prompt ids gives it back.
    assert r["prompt"] == chat.render_text(ex.prompt) == _text(tok, r["prompt_ids"])
  assert {k: records[0][k] for k in ("weight", "confidence", "margin", "annotator_id", "tie",
                                     "source")} == {"weight": 0.25, "confidence": 0.8,
                                                    "margin": 1.5, "annotator_id": "w1",
                                                    "tie": False, "source": "unit"}
  # Defaults are filled in, so records work with batching.collate_* directly.
  assert {k: records[1][k] for k in ("weight", "confidence", "margin", "annotator_id", "tie",
                                     "source")} == {"weight": 1.0, "confidence": 1.0,
                                                    "margin": 0.0, "annotator_id": "",
                                                    "tie": True, "source": ""}


def test_preferences_over_long_policies(tok):
  full = tokenization.tokenize_preferences(_pairs(), tok)
  rows = [len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in full]
  max_len = rows[0] - 3  # only the conversation is too long
  assert rows[1] <= max_len

  report = IngestionReport()
  kept = tokenization.tokenize_preferences(_pairs(), tok, max_len=max_len, report=report)
  assert [r["id"] for r in kept] == ["plain"]
  assert report.dropped == {"too_long_tokens": 1} and report.records_read == 2
  assert "example 'conv'" in report.warnings[0]

  with pytest.raises(DataError, match=re.escape("train.jsonl:1: example 'conv': prompt ") +
                     ".*exceeds max_len.*policy says error"):
    tokenization.tokenize_preferences(_pairs(), tok, max_len=max_len, path="train.jsonl",
                                      policy=ValidationPolicy(on_too_long="error"))

  truncate = ValidationPolicy(on_too_long="truncate")
  report = IngestionReport()
  cut = tokenization.tokenize_preferences(_pairs(), tok, max_len=max_len, policy=truncate,
                                          report=report)
  r, original = cut[0], full[0]
  # The prompt keeps BOS and its end (the assistant header); responses are untouched here.
  assert len(r["prompt_ids"]) + len(r["chosen_ids"]) == max_len
  assert r["prompt_ids"][0] == tok.bos_id
  assert r["prompt_ids"][1:] == original["prompt_ids"][-(len(r["prompt_ids"]) - 1):]
  assert (r["chosen_ids"], r["rejected_ids"]) == (original["chosen_ids"], original["rejected_ids"])
  assert report.truncated == {"prompt_tokens": 1} and report.kept == 2
  assert cut[1] == full[1]

  # A tiny budget also cuts responses: they keep their start and lose EOS.
  tiny = 2 * (len(original["chosen_ids"]) - 2)  # max_len - chosen < max_len // 2
  report = IngestionReport()
  r = tokenization.tokenize_preferences(_pairs()[:1], tok, max_len=tiny, policy=truncate,
                                        report=report)[0]
  protected = tiny // 2
  assert len(r["prompt_ids"]) == protected
  assert r["chosen_ids"] == original["chosen_ids"][:tiny - protected]
  assert r["chosen_ids"][-1] != tok.eos_id
  assert r["rejected_ids"] == original["rejected_ids"]  # "No." fits
  assert report.truncated == {"prompt_tokens": 1, "chosen_tokens": 1}


def test_identical_after_truncation_follows_on_identical(tok):
  pair = [PreferenceExample("Q?", "Same start, then good.", "Same start, then bad.", id="p")]
  full = tokenization.tokenize_preferences(pair, tok)[0]
  common = next(i for i, (a, b) in enumerate(zip(full["chosen_ids"], full["rejected_ids"]))
                if a != b)
  max_len = len(full["prompt_ids"]) + common  # both responses cut inside their common start
  report = IngestionReport()
  policy = ValidationPolicy(on_too_long="truncate")
  assert tokenization.tokenize_preferences(pair, tok, max_len=max_len, policy=policy,
                                           report=report) == []
  assert report.dropped == {"identical_after_truncation": 1}
  kept = tokenization.tokenize_preferences(
      pair, tok, max_len=max_len,
      policy=ValidationPolicy(on_too_long="truncate", on_identical="keep"))
  assert kept[0]["chosen_ids"] == kept[0]["rejected_ids"]


def test_sft_mask_and_truncation(tok):
  examples = [SFTExample(CONV, "Knock knock.", id="s1"), SFTExample("Q", "A.", id="s2")]
  records = tokenization.tokenize_sft(examples, tok)
  for ex, r in zip(examples, records):
    rendered = chat.render(tok, ex.prompt, ex.response)
    assert (r["token_ids"], r["loss_mask"]) == (rendered.ids, rendered.response_mask)
    n = rendered.prompt_len
    assert r["loss_mask"] == [0] * n + [1] * (len(r["token_ids"]) - n)
    assert r["token_ids"][-1] == tok.eos_id
    assert r["prompt"] == chat.render_text(ex.prompt) and r["response"] == ex.response
  multi = tokenization.tokenize_sft(examples[:1], tok, loss_on_prompt_assistant_turns=True)[0]
  assert sum(multi["loss_mask"]) > sum(records[0]["loss_mask"])  # the "Hello!" turn too

  max_len = len(records[0]["token_ids"]) - 2
  report = IngestionReport()
  cut = tokenization.tokenize_sft(examples, tok, max_len=max_len, report=report,
                                  policy=ValidationPolicy(on_too_long="truncate"),
                                  loss_on_prompt_assistant_turns=True)
  assert len(cut[0]["token_ids"]) == max_len == len(cut[0]["loss_mask"])
  # Prompt and mask are cut together: BOS then the last prompt ids, the response intact.
  assert cut[0]["token_ids"][1:] == multi["token_ids"][3:]
  assert cut[0]["loss_mask"] == multi["loss_mask"][:1] + multi["loss_mask"][3:]
  assert report.truncated == {"prompt_tokens": 1} and cut[1] == records[1]


def test_prompts(tok):
  examples = [PromptExample(CONV, id="q1", metadata={"reference": "42"}),
              PreferenceExample("Plain?", "a", "b", id="q2")]  # any example with a prompt
  records = tokenization.tokenize_prompts(examples, tok)
  assert records[0]["prompt_ids"] == chat.render_prompt(tok, CONV)
  assert (records[0]["reference"], records[1]["reference"]) == ("42", "")
  n = len(records[0]["prompt_ids"])
  report = IngestionReport()
  cut = tokenization.tokenize_prompts(examples, tok, max_len=n - 4, report=report,
                                      policy=ValidationPolicy(on_too_long="truncate"))
  assert cut[0]["prompt_ids"] == records[0]["prompt_ids"][:1] + records[0]["prompt_ids"][5:]
  assert report.truncated == {"prompt_tokens": 1}
  with pytest.raises(ValueError, match="max_len must be an int >= 2"):
    tokenization.tokenize_prompts(examples, tok, max_len=1)
