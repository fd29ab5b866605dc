"""Tokenisation of validated examples into the token-id records the TFDS builders store.

TFDS = TensorFlow Datasets (used here without TensorFlow), SFT = supervised fine-tuning, EOS = end
of sequence, BOS = beginning of sequence. Every id sequence comes from `chat.render`, which
tokenises each template piece separately, so these invariants hold (and are tested):

  preference  `prompt_ids` = the generation prompt (BOS ... assistant header); `chosen_ids` and
              `rejected_ids` are the continuation after exactly those ids (" " + response, then
              EOS): `prompt_ids + chosen_ids == chat.render(tok, prompt, chosen).ids`.
  sft         `token_ids` = prompt + response ids; `loss_mask` = the template's response mask
              (1 on the response tokens and their EOS, optionally on earlier assistant turns).
  prompt      `prompt_ids` = the generation prompt, for sampling.

Text fields hold `chat.render_text(prompt)` (so a conversation becomes one string, and decoding
`prompt_ids` gives it back) and the raw response texts. Defaults are filled in (weight 1,
confidence 1, margin 0, tie False, "" for annotator and source), so the records can go straight
to `batching.collate_*` as well as to `tfds_builders.build_dataset`.

Over-long rows (`max_len` = the most tokens of one row: prompt plus its longest response) follow
`ValidationPolicy.on_too_long`, and every drop or cut is counted in the report:
  "drop"      dropped as "too_long_tokens";
  "error"     DataError naming the file, line and example id;
  "truncate"  the prompt keeps BOS and its LAST tokens (never cut below min(its length,
              max_len // 2) when a response needs the room), then each response keeps its FIRST
              tokens. A cut response has no EOS: it did not end there. Counted in
              `report.truncated` as "prompt_tokens", "chosen_tokens", "rejected_tokens",
              "response_tokens". Preference pairs whose cut responses become identical follow
              `on_identical` ("identical_after_truncation").
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from rlhf_jax.data import chat
from rlhf_jax.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from rlhf_jax.data.ingest import DEFAULT_POLICY
from rlhf_jax.data.schemas import PreferenceExample, PromptExample, SFTExample
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import DataError, IngestionReport, ValidationPolicy

Record = dict[str, Any]


def _check_max_len(max_len: int | None) -> None:
  if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int)
                              or max_len < 2):
    raise ValueError(f"max_len must be an int >= 2 or None, got {max_len!r}")


def _cut_prompt(ids: list[int], keep: int) -> list[int]:
  """BOS plus the last keep - 1 ids (keep >= 1)."""
  return ids if keep >= len(ids) else ids[:1] + ids[len(ids) - keep + 1:]


def _prompt_keep(prompt_len: int, longest_response: int, max_len: int) -> int:
  """How many prompt ids to keep so the row fits, protecting min(prompt, max_len // 2) of them."""
  protected = min(prompt_len, max(1, max_len // 2))
  return min(prompt_len, max(protected, max_len - longest_response))


class _Stage:
  """Report bookkeeping and policy decisions for one call of a tokenize_* function."""

  def __init__(self, policy: ValidationPolicy, report: IngestionReport | None,
               path: str | os.PathLike | None, max_len: int | None):
    _check_max_len(max_len)
    self.policy = policy
    self.report = report if report is not None else IngestionReport()
    self.path = None if path is None else str(path)
    self.max_len = max_len

  def line(self, index: int) -> int | None:
    return index + 1 if self.path is not None else None

  def too_long(self, index: int, example_id: str, detail: str, field: str) -> bool:
    """Applies on_too_long; True when the caller should truncate, False when dropped."""
    message = f"example {example_id!r}: {detail} exceeds max_len {self.max_len}"
    if self.policy.on_too_long == "error":
      raise DataError(self.path, f"{message} (too_long_tokens; policy says error)",
                      line=self.line(index), field=field)
    if self.policy.on_too_long == "drop":
      self.report.drop("too_long_tokens", self.line(index), message)
      return False
    return True

  def identical(self, index: int, example_id: str) -> bool:
    """Applies on_identical to a pair made identical by truncation; True to keep it."""
    message = f"example {example_id!r}: chosen and rejected ids are identical after truncation"
    if self.policy.on_identical == "error":
      raise DataError(self.path, f"{message} (policy says error)", line=self.line(index),
                      field="rejected")
    if self.policy.on_identical == "drop":
      self.report.drop("identical_after_truncation", self.line(index), message)
      return False
    self.report.warn(message, self.line(index))
    return True


def tokenize_preferences(examples: Sequence[PreferenceExample], tokenizer: Tokenizer, *,
                         template: ChatTemplate = DEFAULT_TEMPLATE, max_len: int | None = None,
                         policy: ValidationPolicy = DEFAULT_POLICY,
                         report: IngestionReport | None = None,
                         path: str | os.PathLike | None = None) -> list[Record]:
  """Preference records with `prompt_ids`, `chosen_ids`, `rejected_ids` (see module docstring).

  Args:
    examples: validated preference pairs.
    tokenizer: supplies the ids; BOS/EOS come from it.
    template: chat template (roles, separator).
    max_len: most tokens of one row (prompt + the longer response); None: no limit.
    policy: its `on_too_long` / `on_identical` decide over-long rows.
    report: counts this stage (records_read += len(examples), kept, drops, truncations).
    path: file the examples came from, for error messages (line = index + 1).

  Example:
    r = tokenize_preferences([PreferenceExample("Hi", "Hello!", "Go.", id="1")], tok)[0]
    r["prompt_ids"] + r["chosen_ids"] == chat.render(tok, "Hi", "Hello!").ids
  """
  stage = _Stage(policy, report, path, max_len)
  out = []
  for index, ex in enumerate(examples):
    stage.report.records_read += 1
    chosen = chat.render(tokenizer, ex.prompt, ex.chosen, template=template)
    rejected = chat.render(tokenizer, ex.prompt, ex.rejected, template=template)
    n = chosen.prompt_len
    prompt_ids, chosen_ids, rejected_ids = chosen.ids[:n], chosen.ids[n:], rejected.ids[n:]
    if rejected.ids[:n] != prompt_ids:  # The template guarantees this; never train on a mismatch.
      raise AssertionError(f"example {ex.id!r}: prompt ids differ between chosen and rejected")
    longest = max(len(chosen_ids), len(rejected_ids))
    if max_len is not None and len(prompt_ids) + longest > max_len:
      detail = (f"prompt {len(prompt_ids)} + chosen {len(chosen_ids)} / rejected "
                f"{len(rejected_ids)} tokens")
      if not stage.too_long(index, ex.id, detail, "prompt"):
        continue
      keep = _prompt_keep(len(prompt_ids), longest, max_len)
      if keep < len(prompt_ids):
        prompt_ids = _cut_prompt(prompt_ids, keep)
        stage.report.truncate("prompt_tokens", stage.line(index))
      budget = max_len - len(prompt_ids)
      if len(chosen_ids) > budget:
        chosen_ids = chosen_ids[:budget]
        stage.report.truncate("chosen_tokens", stage.line(index))
      if len(rejected_ids) > budget:
        rejected_ids = rejected_ids[:budget]
        stage.report.truncate("rejected_tokens", stage.line(index))
      if chosen_ids == rejected_ids and not stage.identical(index, ex.id):
        continue
    stage.report.kept += 1
    out.append({
        "id": ex.id, "prompt": chat.render_text(ex.prompt, template=template),
        "chosen": ex.chosen, "rejected": ex.rejected, "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
        "annotator_id": ex.annotator_id or "", "tie": ex.tie,
        "weight": 1.0 if ex.weight is None else ex.weight,
        "confidence": 1.0 if ex.confidence is None else ex.confidence,
        "margin": 0.0 if ex.margin is None else ex.margin, "source": ex.source or ""})
  return out


def tokenize_sft(examples: Sequence[SFTExample], tokenizer: Tokenizer, *,
                 template: ChatTemplate = DEFAULT_TEMPLATE, max_len: int | None = None,
                 policy: ValidationPolicy = DEFAULT_POLICY, report: IngestionReport | None = None,
                 path: str | os.PathLike | None = None,
                 loss_on_prompt_assistant_turns: bool = False) -> list[Record]:
  """SFT records with `token_ids` and their 0/1 `loss_mask` (arguments as `tokenize_preferences`).

  `loss_on_prompt_assistant_turns` also trains on the assistant turns inside the prompt.

  Example:
    r = tokenize_sft([SFTExample("Hi", "Hello!", id="1")], tok)[0]
    # r["loss_mask"] is 0 up to the assistant header, then 1 on " Hello!" and EOS.
  """
  stage = _Stage(policy, report, path, max_len)
  out = []
  for index, ex in enumerate(examples):
    stage.report.records_read += 1
    rendered = chat.render(tokenizer, ex.prompt, ex.response, template=template,
                           loss_on_prompt_assistant_turns=loss_on_prompt_assistant_turns)
    n = rendered.prompt_len
    prompt_ids, response_ids = rendered.ids[:n], rendered.ids[n:]
    prompt_mask, response_mask = rendered.response_mask[:n], rendered.response_mask[n:]
    if max_len is not None and len(rendered.ids) > max_len:
      detail = f"prompt {len(prompt_ids)} + response {len(response_ids)} tokens"
      if not stage.too_long(index, ex.id, detail, "prompt"):
        continue
      keep = _prompt_keep(len(prompt_ids), len(response_ids), max_len)
      if keep < len(prompt_ids):
        prompt_ids, prompt_mask = _cut_prompt(prompt_ids, keep), _cut_prompt(prompt_mask, keep)
        stage.report.truncate("prompt_tokens", stage.line(index))
      budget = max_len - len(prompt_ids)
      if len(response_ids) > budget:
        response_ids, response_mask = response_ids[:budget], response_mask[:budget]
        stage.report.truncate("response_tokens", stage.line(index))
    stage.report.kept += 1
    out.append({"id": ex.id, "prompt": chat.render_text(ex.prompt, template=template),
                "response": ex.response, "token_ids": prompt_ids + response_ids,
                "loss_mask": prompt_mask + response_mask, "source": ex.source or ""})
  return out


def tokenize_prompts(examples: Sequence[PromptExample | PreferenceExample | SFTExample],
                     tokenizer: Tokenizer, *, template: ChatTemplate = DEFAULT_TEMPLATE,
                     max_len: int | None = None, policy: ValidationPolicy = DEFAULT_POLICY,
                     report: IngestionReport | None = None,
                     path: str | os.PathLike | None = None,
                     reference_key: str = "reference") -> list[Record]:
  """Prompt records with `prompt_ids` (the generation prompt), from any example with a prompt.

  `reference` is `metadata[reference_key]` when that is a string (e.g. a verifiable answer), else
  "". Over-long prompts keep BOS and their last max_len - 1 ids under "truncate".
  """
  stage = _Stage(policy, report, path, max_len)
  out = []
  for index, ex in enumerate(examples):
    stage.report.records_read += 1
    prompt_ids = chat.render_prompt(tokenizer, ex.prompt, template=template)
    if max_len is not None and len(prompt_ids) > max_len:
      if not stage.too_long(index, ex.id, f"prompt {len(prompt_ids)} tokens", "prompt"):
        continue
      prompt_ids = _cut_prompt(prompt_ids, max_len)
      stage.report.truncate("prompt_tokens", stage.line(index))
    reference = ex.metadata.get(reference_key)
    stage.report.kept += 1
    out.append({"id": ex.id, "prompt": chat.render_text(ex.prompt, template=template),
                "prompt_ids": prompt_ids,
                "reference": reference if isinstance(reference, str) else "",
                "source": ex.source or ""})
  return out
