"""Anthropic HH-RLHF (Helpful and Harmless RLHF, Bai et al. 2022, arXiv:2204.05862) ingestion.

Each record is `{"chosen": transcript, "rejected": transcript}`, two whole dialogues
"\\n\\nHuman: ...\\n\\nAssistant: ..." that share the context and differ in the final
assistant turn.

Splitting prompt from response:
  * The prompt is cut at the LONGEST COMMON PREFIX (LCP) of the two transcripts, backed off to the
    last "\\n\\nAssistant:" marker inside it, so the prompt always ends with "\\n\\nAssistant:" and
    is identical for both sides by construction. Splitting each side at its own last
    "\\n\\nAssistant:" is wrong: responses can contain invented "Human:"/"Assistant:" turns.
  * The response is the rest after the single space that follows the marker; it may contain
    "\\n\\n", invented turns, trailing whitespace, or be empty (then counted by the policy).
  * The prompt is parsed into turns on "\\n\\nHuman: " / "\\n\\nAssistant: " markers only (never on
    "\\n\\n" alone). Rendering the parsed turns with the default chat template reproduces the
    transcript exactly: `chat.render_text(prompt, chosen) == record["chosen"]`.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterator, Literal, Mapping

from rlhf_jax.data.ingest import DEFAULT_POLICY, default_source, ingest
from rlhf_jax.data.schemas import Message, PreferenceExample, SchemaError
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import IngestionReport, ValidationPolicy

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant): ")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str]:
  """Splits two HH transcripts into (prompt, chosen_response, rejected_response).

  The prompt is the LCP backed off to its last "\\n\\nAssistant:" and ends with that marker; each
  response has the one space after the marker removed.

  Example:
    >>> split_transcripts("\\n\\nHuman: Hi\\n\\nAssistant: Hello",
    ...                   "\\n\\nHuman: Hi\\n\\nAssistant: Go")
    ('\\n\\nHuman: Hi\\n\\nAssistant:', 'Hello', 'Go')

  Raises:
    ValueError: when the common prefix contains no "\\n\\nAssistant:" marker.
  """
  n = min(len(chosen), len(rejected))
  lcp = 0
  while lcp < n and chosen[lcp] == rejected[lcp]:
    lcp += 1
  cut = chosen.rfind(ASSISTANT, 0, lcp)  # the marker lies wholly inside the common prefix
  if cut < 0:
    raise ValueError("chosen and rejected share no prefix ending in '\\n\\nAssistant:'")
  end = cut + len(ASSISTANT)
  return chosen[:end], _strip_space(chosen[end:]), _strip_space(rejected[end:])


def _strip_space(response: str) -> str:
  return response[1:] if response.startswith(" ") else response


def parse_transcript(prompt: str) -> tuple[Message, ...]:
  """Turns of an HH prompt (which must start with "\\n\\nHuman: " and end with "\\n\\nAssistant:").

  Raises:
    ValueError: naming what is wrong with the transcript.
  """
  if not prompt.endswith(ASSISTANT):
    raise ValueError("an HH prompt must end with '\\n\\nAssistant:'")
  body = prompt[: -len(ASSISTANT)]
  pieces = _TURN.split(body)
  # pieces = [text before the first marker, role, content, role, content, ...]
  if pieces[0] or len(pieces) < 3:
    raise ValueError("an HH transcript must start with '\\n\\nHuman: '")
  return tuple(Message(_ROLES[role], content) for role, content in zip(pieces[1::2], pieces[2::2]))


def hh_parser(prompt_format: Literal["messages", "raw"] = "messages"):
  """A `parse` function for `ingest` over HH records.

  prompt_format: "messages" parses the prompt into user/assistant turns; "raw" keeps the
  transcript text ending in "\\n\\nAssistant:" (for models trained on raw HH text).
  """
  if prompt_format not in ("messages", "raw"):
    raise ValueError(f"prompt_format must be 'messages' or 'raw', got {prompt_format!r}")

  def parse(record: Mapping[str, Any], line: int, source: str) -> PreferenceExample:
    for field in ("chosen", "rejected"):
      if field not in record:
        raise SchemaError(field, "missing required field")
      if not isinstance(record[field], str):
        raise SchemaError(field, f"expected str, got {type(record[field]).__name__}")
    extra = sorted(set(record) - {"chosen", "rejected"})
    if extra:
      raise SchemaError(extra[0], "unknown field in an HH-RLHF record (expected chosen, rejected)")
    try:
      prompt, chosen, rejected = split_transcripts(record["chosen"], record["rejected"])
      parsed = parse_transcript(prompt) if prompt_format == "messages" else prompt
    except ValueError as e:
      raise SchemaError("chosen", str(e)) from None
    return PreferenceExample(prompt=parsed, chosen=chosen, rejected=rejected, id=f"{source}:{line}",
                             source=source)

  return parse


def iter_hh_rlhf(path: str | os.PathLike, report: IngestionReport, *,
                 policy: ValidationPolicy = DEFAULT_POLICY, tokenizer: Tokenizer | None = None,
                 source: str | None = None,
                 prompt_format: Literal["messages", "raw"] = "messages"
                 ) -> Iterator[PreferenceExample]:
  """Streams PreferenceExamples from an HH-RLHF file (JSONL, gzip or not)."""
  return ingest(path, hh_parser(prompt_format), report=report, policy=policy, tokenizer=tokenizer,
                source=source or f"hh-rlhf/{default_source(path)}")


def read_hh_rlhf(path: str | os.PathLike, **kwargs
                 ) -> tuple[list[PreferenceExample], IngestionReport]:
  """All PreferenceExamples of an HH-RLHF file and the report.

  Example:
    examples, report = read_hh_rlhf("../shared/data/hh-rlhf/helpful-base/test.jsonl.gz")
    report.dropped   # {'empty_rejected': 4, 'identical_responses': 2}
  """
  report = IngestionReport()
  return list(iter_hh_rlhf(path, report, **kwargs)), report
