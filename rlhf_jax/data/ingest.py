"""Ingestion of preference, SFT (Supervised Fine-Tuning) and prompt records from JSON / JSONL files.

Accepted record layouts (files may be JSON arrays or JSONL, plain or gzip):

  preferences  {"prompt": P, "chosen": R, "rejected": R, ...optional schema fields}
               where P is text or a list of {role, content} messages and R is text, one
               assistant message, or a message list that repeats the prompt first (stripped).
               TRL-style implicit prompt: {"chosen": [msgs], "rejected": [msgs]} without "prompt";
               the prompt is the longest common message prefix, and each side must continue it
               with exactly one assistant message.
  SFT          {"prompt": P, "response" | "completion": R} or {"messages": [msgs]} (the last
               message, an assistant turn, is the response).
  prompts      {"prompt": P, ...}.

Columns outside the schema are kept in `metadata` (one warning per file says which). Missing ids
become "<source>:<line>". Every function streams: records are read, validated (see
`validation.ValidationPolicy`) and yielded one at a time, and counted in an `IngestionReport`.
To write the result atomically, pass the iterator to `records.write_jsonl`.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Iterator, Mapping

from rlhf_jax.data import records
from rlhf_jax.data.schemas import Message, PreferenceExample, Prompt, PromptExample, SchemaError
from rlhf_jax.data.schemas import SFTExample, prompt_from_json
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import DataError, Example, IngestionReport, ValidationPolicy
from rlhf_jax.data.validation import apply_policy

DEFAULT_POLICY = ValidationPolicy()

_PREFERENCE_FIELDS = ("prompt", "chosen", "rejected", "id", "annotator_id", "tie", "confidence",
                      "margin", "weight", "source", "metadata")
_SFT_FIELDS = ("prompt", "response", "completion", "messages", "id", "source", "metadata")
_PROMPT_FIELDS = ("prompt", "id", "source", "metadata")


def default_source(path: str | os.PathLike) -> str:
  """"<folder>/<name>" without .gz/.jsonl/.json suffixes, e.g. "helpful-base/test"."""
  p = pathlib.Path(path)
  name = p.name
  for suffix in (".gz", ".jsonl", ".json"):
    if name.endswith(suffix):
      name = name[: -len(suffix)]
  return f"{p.parent.name}/{name}" if p.parent.name else name


def ingest(path: str | os.PathLike, parse: Callable[[Mapping[str, Any], int, str], Example], *,
           report: IngestionReport, policy: ValidationPolicy = DEFAULT_POLICY,
           tokenizer: Tokenizer | None = None, source: str | None = None) -> Iterator[Example]:
  """Streams `parse(record, line, source)` over a file through the validation policy.

  Schema errors are re-raised as DataError naming the file, line and field.
  """
  source = source or default_source(path)
  report.source = report.source or str(path)
  for line, record in records.iter_records(path):
    report.records_read += 1
    try:
      example = parse(record, line, source)
    except SchemaError as e:
      raise DataError(path, str(e), line=line, field=e.field) from None
    example = apply_policy(example, policy, report, line=line, path=path, tokenizer=tokenizer)
    if example is not None:
      report.kept += 1
      yield example


def _split_extras(record: Mapping[str, Any], known: tuple[str, ...],
                  on_extra: Callable[[list[str]], None]) -> dict[str, Any]:
  """Metadata of a record: its "metadata" object plus any unknown columns."""
  metadata = record.get("metadata", {})
  if not isinstance(metadata, Mapping):
    raise SchemaError("metadata", f"expected a JSON object, got {type(metadata).__name__}")
  extras = [k for k in record if k not in known]
  if not extras:
    return dict(metadata)
  clash = [k for k in extras if k in metadata]
  if clash:
    raise SchemaError(clash[0], "column is also a key of 'metadata'")
  on_extra(extras)
  return {**metadata, **{k: record[k] for k in extras}}


def _extra_warner(report: IngestionReport) -> Callable[[int], Callable[[list[str]], None]]:
  seen: set[str] = set()

  def for_line(line: int) -> Callable[[list[str]], None]:
    def warn(extras: list[str]) -> None:
      new = sorted(set(extras) - seen)
      if new:
        seen.update(new)
        report.warn(f"columns {new} are not schema fields; stored in metadata", line)
    return warn
  return for_line


def _require(record: Mapping[str, Any], *names: str) -> None:
  for n in names:
    if n not in record:
      raise SchemaError(n, "missing required field")


def _as_response(field: str, value: Any, prompt: Prompt | None) -> str:
  """A response given as text, one assistant message, or prompt messages + one assistant message."""
  if isinstance(value, str):
    return value
  msgs = prompt_from_json(field, value)
  if prompt is not None and not isinstance(prompt, str) and msgs[:len(prompt)] == prompt:
    msgs = msgs[len(prompt):]
  return _single_assistant(field, msgs)


def _single_assistant(field: str, msgs: tuple[Message, ...]) -> str:
  if len(msgs) != 1:
    raise SchemaError(field, f"expected the response as ONE assistant message after the prompt, "
                      f"got {len(msgs)} messages")
  if msgs[0].role != "assistant":
    raise SchemaError(f"{field}[-1].role", f"the response must be an assistant message, "
                      f"got {msgs[0].role!r}")
  return msgs[0].content


def split_conversations(chosen: tuple[Message, ...], rejected: tuple[Message, ...]
                        ) -> tuple[tuple[Message, ...], str, str]:
  """TRL implicit prompt: (common message prefix, chosen reply, rejected reply).

  The prefix is the longest common one that leaves at least one message on each side; each side
  must then be exactly one assistant message.
  """
  if not chosen or not rejected:
    raise SchemaError("chosen" if not chosen else "rejected", "empty message list")
  k = 0
  while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
    k += 1
  if k == 0:
    raise SchemaError("chosen", "chosen and rejected share no leading prompt messages and there "
                      "is no 'prompt' column")
  return (chosen[:k], _single_assistant("chosen", chosen[k:]),
          _single_assistant("rejected", rejected[k:]))


def preference_parser(report: IngestionReport) -> Callable[[Mapping[str, Any], int, str],
                                                           PreferenceExample]:
  """A `parse` function for `ingest` that builds PreferenceExamples (see module docstring)."""
  warner = _extra_warner(report)

  def parse(record: Mapping[str, Any], line: int, source: str) -> PreferenceExample:
    _require(record, "chosen", "rejected")
    if "prompt" in record:
      prompt = prompt_from_json("prompt", record["prompt"])
      chosen = _as_response("chosen", record["chosen"], prompt)
      rejected = _as_response("rejected", record["rejected"], prompt)
    elif isinstance(record["chosen"], list) and isinstance(record["rejected"], list):
      prompt, chosen, rejected = split_conversations(
          prompt_from_json("chosen", record["chosen"]),
          prompt_from_json("rejected", record["rejected"]))
    else:
      raise SchemaError("prompt", "missing required field (it can only be inferred when chosen "
                        "and rejected are both message lists)")
    fields = {k: record[k] for k in ("annotator_id", "tie", "confidence", "margin", "weight")
              if k in record}
    return PreferenceExample(
        prompt=prompt, chosen=chosen, rejected=rejected, id=record.get("id", f"{source}:{line}"),
        source=record.get("source", source),
        metadata=_split_extras(record, _PREFERENCE_FIELDS, warner(line)), **fields)

  return parse


def sft_parser(report: IngestionReport) -> Callable[[Mapping[str, Any], int, str], SFTExample]:
  """A `parse` function for `ingest` that builds SFTExamples."""
  warner = _extra_warner(report)

  def parse(record: Mapping[str, Any], line: int, source: str) -> SFTExample:
    common = dict(id=record.get("id", f"{source}:{line}"), source=record.get("source", source),
                  metadata=_split_extras(record, _SFT_FIELDS, warner(line)))
    if "messages" in record:
      for k in ("prompt", "response", "completion"):
        if k in record:
          raise SchemaError(k, "give either 'messages' or 'prompt' + 'response', not both")
      msgs = prompt_from_json("messages", record["messages"])
      if isinstance(msgs, str):
        raise SchemaError("messages", "expected a list of messages, got str")
      return SFTExample.from_messages(msgs, **common)
    if "response" in record and "completion" in record:
      raise SchemaError("completion", "give 'response' or its alias 'completion', not both")
    response_key = "completion" if "completion" in record else "response"
    _require(record, "prompt", response_key)
    prompt = prompt_from_json("prompt", record["prompt"])
    response = _as_response(response_key, record[response_key], prompt)
    return SFTExample(prompt=prompt, response=response, **common)

  return parse


def prompt_parser(report: IngestionReport
                  ) -> Callable[[Mapping[str, Any], int, str], PromptExample]:
  """A `parse` function for `ingest` that builds PromptExamples."""
  warner = _extra_warner(report)

  def parse(record: Mapping[str, Any], line: int, source: str) -> PromptExample:
    _require(record, "prompt")
    return PromptExample(prompt=prompt_from_json("prompt", record["prompt"]),
                         id=record.get("id", f"{source}:{line}"),
                         source=record.get("source", source),
                         metadata=_split_extras(record, _PROMPT_FIELDS, warner(line)))

  return parse


def iter_preferences(path: str | os.PathLike, report: IngestionReport, **kwargs
                     ) -> Iterator[PreferenceExample]:
  """Streams PreferenceExamples; kwargs: policy, tokenizer, source (see `ingest`)."""
  return ingest(path, preference_parser(report), report=report, **kwargs)


def iter_sft(path: str | os.PathLike, report: IngestionReport, **kwargs) -> Iterator[SFTExample]:
  """Streams SFTExamples; kwargs: policy, tokenizer, source."""
  return ingest(path, sft_parser(report), report=report, **kwargs)


def iter_prompts(path: str | os.PathLike, report: IngestionReport, **kwargs
                 ) -> Iterator[PromptExample]:
  """Streams PromptExamples; kwargs: policy, tokenizer, source."""
  return ingest(path, prompt_parser(report), report=report, **kwargs)


def read_preferences(path: str | os.PathLike, **kwargs
                     ) -> tuple[list[PreferenceExample], IngestionReport]:
  """All PreferenceExamples of a file and the report.

  Example:
    examples, report = read_preferences("prefs.jsonl.gz",
                                        policy=ValidationPolicy(on_identical="error"))
    print(report.summary())
  """
  report = IngestionReport()
  return list(iter_preferences(path, report, **kwargs)), report


def read_sft(path: str | os.PathLike, **kwargs) -> tuple[list[SFTExample], IngestionReport]:
  """All SFTExamples of a file and the report."""
  report = IngestionReport()
  return list(iter_sft(path, report, **kwargs)), report


def read_prompts(path: str | os.PathLike, **kwargs) -> tuple[list[PromptExample], IngestionReport]:
  """All PromptExamples of a file and the report."""
  report = IngestionReport()
  return list(iter_prompts(path, report, **kwargs)), report
