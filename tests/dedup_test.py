"""Tests of rlhf_jax.data.dedup."""
import pytest

from rlhf_jax.data import dedup
from rlhf_jax.data.schemas import Message, PreferenceExample, PromptExample, SFTExample
from rlhf_jax.data.validation import IngestionReport


def _p(prompt, chosen="a", rejected="b", id="x"):
  return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, id=id)


@pytest.mark.parametrize("text, expected", [
    ("Hello  World", "hello world"),
    ("  tabs\tand\nnewlines \r\n", "tabs and newlines"),
    ("ＦＵＬＬ width", "full width"),  # NFKC folds full-width letters
    ("Straße", "strasse"),  # case-fold, not lower()
    ("ﬁne", "fine"),  # NFKC expands the ligature
    ("e\u0301", "é"),  # NFKC composes
    ("\u00a0nbsp\u2003em", "nbsp em"),
])
def test_normalize_text(text, expected):
  assert dedup.normalize_text(text) == expected


def test_exact_vs_normalized_pair_dedup_keeps_first():
  examples = [_p("Hi there", id="1"), _p("Hi there", id="2"), _p("hi  THERE", id="3"),
              _p("Hi there", "b", "a", id="4"),  # swapped pair: a conflict, not a duplicate
              _p("Hi there", "A", id="5"), _p("Other", id="6")]
  report = IngestionReport(records_read=6, kept=6)
  exact = dedup.dedup_pairs(examples, "exact", report)
  assert [e.id for e in exact] == ["1", "3", "4", "5", "6"]
  assert report.dropped == {"duplicate_exact": 1} and report.kept == 5
  normalized = dedup.dedup_pairs(exact, "normalized", report)
  assert [e.id for e in normalized] == ["1", "4", "6"]
  assert report.dropped == {"duplicate_exact": 1, "duplicate_normalized": 2}
  assert report.records_read == report.kept + report.num_dropped


def test_pair_key_is_length_prefixed():
  assert dedup.pair_key(_p("ab", "c", "d"), "exact") != dedup.pair_key(_p("a", "bc", "d"), "exact")


def test_sft_pairs():
  examples = [SFTExample(prompt="q", response="r", id="1"), SFTExample(prompt="Q", response="R ", id="2"),
              SFTExample(prompt="q", response="other", id="3")]
  assert [e.id for e in dedup.dedup_pairs(examples)] == ["1", "3"]
  with pytest.raises(TypeError, match="PromptExample"):
    dedup.pair_key(PromptExample(prompt="q", id="p"))


def test_prompt_dedup_and_conversation_keys():
  conv = (Message("user", "Hello"),)
  examples = [PromptExample(prompt="Hello", id="1"), PromptExample(prompt=conv, id="2"),
              PromptExample(prompt=(Message("system", "Hello"),), id="3"),
              PromptExample(prompt="hello ", id="4")]
  # A plain-text prompt equals a single user turn with the same text; roles matter.
  assert [e.id for e in dedup.dedup_prompts(examples, "exact")] == ["1", "3", "4"]
  report = IngestionReport(records_read=4, kept=4)
  assert [e.id for e in dedup.dedup_prompts(examples, "normalized", report)] == ["1", "3"]
  assert report.dropped == {"duplicate_prompt_normalized": 2}
  with pytest.raises(ValueError, match="dedup mode"):
    dedup.dedup_prompts(examples, "fuzzy")


def test_split_is_prompt_disjoint_deterministic_and_seeded():
  examples = [_p(f"Prompt number {i % 150}" + (" " if i % 2 else ""), id=str(i)) for i in range(600)]
  train, evals = dedup.split_by_prompt(examples, eval_fraction=0.2, seed=3)
  assert len(train) + len(evals) == 600
  dedup.check_prompt_disjoint(train, evals)
  # Differently spaced copies of one prompt end up in the same split.
  eval_prompts = {dedup.normalize_text(e.prompt) for e in evals}
  assert all(dedup.normalize_text(e.prompt) not in eval_prompts for e in train)
  # Fraction of distinct prompts is near 0.2 (150 prompts: binomial std ~ 0.033).
  assert 0.08 < len(eval_prompts) / 150 < 0.32
  again = dedup.split_by_prompt(examples, eval_fraction=0.2, seed=3)
  assert again == (train, evals)
  other = dedup.split_by_prompt(examples, eval_fraction=0.2, seed=4)
  assert [e.id for e in other[1]] != [e.id for e in evals]
  # A prompt's split does not depend on the rest of the data.
  sub_train, sub_evals = dedup.split_by_prompt(examples[:50], eval_fraction=0.2, seed=3)
  assert {e.id for e in sub_evals} == {e.id for e in evals if int(e.id) < 50}
  assert dedup.split_by_prompt(examples, 0.0)[1] == [] and dedup.split_by_prompt(examples, 1.0)[0] == []
  with pytest.raises(ValueError, match="eval_fraction"):
    dedup.split_by_prompt(examples, 1.5)


def test_check_prompt_disjoint_detects_leaks():
  train = [_p("Shared prompt", id="t1"), _p("only train", id="t2")]
  evals = [_p("shared   PROMPT", id="e1"), _p("only eval", id="e2")]
  with pytest.raises(ValueError, match="1 eval examples share a prompt.*'e1'.*'t1'"):
    dedup.check_prompt_disjoint(train, evals)
  dedup.check_prompt_disjoint(train[1:], evals)


def test_eval_score_is_uniform_in_unit_interval():
  scores = [dedup.eval_score(f"p{i}", seed=0) for i in range(2000)]
  assert all(0.0 <= s < 1.0 for s in scores)
  assert abs(sum(scores) / len(scores) - 0.5) < 0.03
