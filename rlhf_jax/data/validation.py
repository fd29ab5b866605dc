"""Validation of ingested examples: errors that name the place, policies, and the ingestion report.

Nothing is dropped or changed silently. Structural problems (malformed JSON, missing or mistyped
fields, empty or truncated files) raise `DataError` naming the file and line. Content problems
(empty texts, identical chosen/rejected, over-long texts) follow a `ValidationPolicy` and every
drop or truncation is counted, with its line, in an `IngestionReport`.

Invariant of a report: `records_read == kept + sum(dropped.values())`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Literal, Optional

from rlhf_jax.data.schemas import Comparison, Message, PreferenceExample, Prompt, PromptExample
from rlhf_jax.data.schemas import SFTExample
from rlhf_jax.data.tokenizer import Tokenizer

Example = PreferenceExample | SFTExample | PromptExample | Comparison


class DataError(ValueError):
  """A data file cannot be ingested. The message starts with `path:line:` (or `path:`)."""

  def __init__(self, path: str | os.PathLike | None, message: str, line: int | None = None,
               field: str | None = None):
    self.path = None if path is None else str(path)
    self.line = line
    self.field = field
    where = self.path or "<data>"
    if line is not None:
      where = f"{where}:{line}"
    super().__init__(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class ValidationPolicy:
  """What to do with suspicious examples.

  Lengths are measured on the prompt (sum over its turns' contents, template tokens not counted:
  the batching stage enforces exact sequence lengths) and on each response separately. Character
  limits always apply; token limits apply only when a tokenizer is passed to ingestion.
  Truncation keeps the END of a prompt (dropping whole leading turns of a conversation first) and
  the START of a response.
  """

  on_empty: Literal["drop", "error"] = "drop"
  on_identical: Literal["drop", "keep", "error"] = "drop"
  on_too_long: Literal["drop", "truncate", "error"] = "drop"
  max_prompt_chars: Optional[int] = None
  max_response_chars: Optional[int] = None
  max_prompt_tokens: Optional[int] = None
  max_response_tokens: Optional[int] = None

  def __post_init__(self):
    for name, allowed in (("on_empty", ("drop", "error")),
                          ("on_identical", ("drop", "keep", "error")),
                          ("on_too_long", ("drop", "truncate", "error"))):
      if getattr(self, name) not in allowed:
        raise ValueError(f"ValidationPolicy.{name} must be one of {allowed}, "
                         f"got {getattr(self, name)!r}")
    for name in ("max_prompt_chars", "max_response_chars", "max_prompt_tokens",
                 "max_response_tokens"):
      v = getattr(self, name)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
        raise ValueError(f"ValidationPolicy.{name} must be a positive int or None, got {v!r}")


@dataclasses.dataclass
class IngestionReport:
  """Counts and warnings of one ingestion (or of several, merged)."""

  source: str = ""
  records_read: int = 0
  kept: int = 0
  dropped: dict[str, int] = dataclasses.field(default_factory=dict)
  truncated: dict[str, int] = dataclasses.field(default_factory=dict)
  warnings: list[str] = dataclasses.field(default_factory=list)
  warnings_omitted: int = 0
  max_warnings: int = 200

  def _where(self, line: int | None) -> str:
    return f"{self.source}:{line}" if line is not None else self.source

  def warn(self, message: str, line: int | None = None) -> None:
    if len(self.warnings) < self.max_warnings:
      self.warnings.append(f"{self._where(line)}: {message}")
    else:
      self.warnings_omitted += 1

  def drop(self, reason: str, line: int | None = None, detail: str = "") -> None:
    """Counts one dropped record (already counted in `records_read`)."""
    self.dropped[reason] = self.dropped.get(reason, 0) + 1
    self.warn(f"dropped ({reason}){': ' + detail if detail else ''}", line)

  def remove_kept(self, reason: str, count: int = 1) -> None:
    """Moves `count` kept records to `dropped[reason]` (used by dedup after ingestion)."""
    if count > self.kept:
      raise ValueError(f"cannot remove {count} records: only {self.kept} kept")
    if count:
      self.kept -= count
      self.dropped[reason] = self.dropped.get(reason, 0) + count

  def truncate(self, field: str, line: int | None = None) -> None:
    self.truncated[field] = self.truncated.get(field, 0) + 1
    self.warn(f"truncated {field}", line)

  @property
  def num_dropped(self) -> int:
    return sum(self.dropped.values())

  def summary(self) -> str:
    lines = [f"{self.source or 'ingestion'}: read {self.records_read}, kept {self.kept}, "
             f"dropped {self.num_dropped}"]
    for reason, n in sorted(self.dropped.items()):
      lines.append(f"  dropped {reason}: {n}")
    for field, n in sorted(self.truncated.items()):
      lines.append(f"  truncated {field}: {n}")
    n_warn = len(self.warnings) + self.warnings_omitted
    if n_warn:
      lines.append(f"  warnings: {n_warn}" + (f" (first {len(self.warnings)} kept)"
                                             if self.warnings_omitted else ""))
      lines += [f"    {w}" for w in self.warnings[:10]]
      if n_warn > 10:
        lines.append(f"    ... {n_warn - 10} more")
    return "\n".join(lines)

  def to_dict(self) -> dict[str, Any]:
    return {"source": self.source, "records_read": self.records_read, "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "truncated": dict(sorted(self.truncated.items())),
            "warnings": list(self.warnings), "warnings_omitted": self.warnings_omitted}

  @classmethod
  def merge(cls, reports: list["IngestionReport"], source: str = "") -> "IngestionReport":
    """Sums counts of several reports; warnings are concatenated."""
    out = cls(source=source or "+".join(r.source for r in reports))
    for r in reports:
      out.records_read += r.records_read
      out.kept += r.kept
      for k, v in r.dropped.items():
        out.dropped[k] = out.dropped.get(k, 0) + v
      for k, v in r.truncated.items():
        out.truncated[k] = out.truncated.get(k, 0) + v
      out.warnings += r.warnings
      out.warnings_omitted += r.warnings_omitted
    return out


# Per-example checks ---------------------------------------------------------------------------

_RESPONSE_FIELDS = {PreferenceExample: ("chosen", "rejected"), SFTExample: ("response",),
                    PromptExample: (), Comparison: ("response_a", "response_b")}


def _prompt_is_empty(prompt: Prompt) -> bool:
  if isinstance(prompt, str):
    return not prompt.strip()
  return not any(m.content.strip() for m in prompt)


def _prompt_texts(prompt: Prompt) -> list[str]:
  return [prompt] if isinstance(prompt, str) else [m.content for m in prompt]


def _longest_fitting(text: str, fits: Callable[[str], bool], keep_end: bool) -> str:
  """Longest prefix (or suffix when keep_end) of `text` that `fits`, by binary search."""
  lo, hi = 0, len(text)  # fits(piece of length lo) is assumed; search the largest that fits
  cut = (lambda n: text[len(text) - n:]) if keep_end else (lambda n: text[:n])
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if fits(cut(mid)):
      lo = mid
    else:
      hi = mid - 1
  while lo > 0 and not fits(cut(lo)):  # token counts are not strictly monotone in length
    lo -= 1
  return cut(lo)


class _Measure:
  """Character and (optional) token limits of one side (prompt or response)."""

  def __init__(self, max_chars: int | None, max_tokens: int | None, tokenizer: Tokenizer | None):
    self.max_chars = max_chars
    self.max_tokens = max_tokens if tokenizer is not None else None
    self.tokenizer = tokenizer

  def size(self, texts: list[str]) -> tuple[int, int]:
    chars = sum(len(t) for t in texts)
    tokens = (sum(len(self.tokenizer.encode(t)) for t in texts)
              if self.max_tokens is not None else 0)
    return chars, tokens

  def fits(self, texts: list[str]) -> bool:
    chars, tokens = self.size(texts)
    return ((self.max_chars is None or chars <= self.max_chars) and
            (self.max_tokens is None or tokens <= self.max_tokens))

  def describe(self, texts: list[str]) -> str:
    chars, tokens = self.size(texts)
    out = f"{chars} chars (max {self.max_chars})" if self.max_chars is not None else ""
    if self.max_tokens is not None:
      out += f"{', ' if out else ''}{tokens} tokens (max {self.max_tokens})"
    return out


def _truncate_prompt(prompt: Prompt, m: _Measure) -> Prompt:
  if isinstance(prompt, str):
    return _longest_fitting(prompt, lambda s: m.fits([s]), keep_end=True)
  turns = list(prompt)
  while len(turns) > 1 and not m.fits(_prompt_texts(tuple(turns))):
    turns.pop(0)
  first, rest = turns[0], turns[1:]
  rest_texts = [t.content for t in rest]
  content = _longest_fitting(first.content, lambda s: m.fits([s] + rest_texts), keep_end=True)
  return (Message(first.role, content),) + tuple(rest)


def apply_policy(example: Example, policy: ValidationPolicy, report: IngestionReport, *,
                 line: int | None = None, path: str | os.PathLike | None = None,
                 tokenizer: Tokenizer | None = None) -> Example | None:
  """Checks one example; returns it (possibly truncated) or None when dropped.

  Order: empty texts, then length limits (drop / truncate / error), then identical responses
  (after truncation, which can make two responses equal). Raises DataError when the policy says
  "error". The caller counts `records_read` and `kept`.
  """
  fields = _RESPONSE_FIELDS[type(example)]

  def fail(reason: str, detail: str, field: str) -> None:
    raise DataError(path, f"{detail} ({reason}; policy says error)", line=line, field=field)

  # Empty texts.
  empties = (["prompt"] if _prompt_is_empty(example.prompt) else []) + [
      f for f in fields if not getattr(example, f).strip()]
  if empties:
    reason = f"empty_{empties[0]}"
    if policy.on_empty == "error":
      fail(reason, f"empty {empties[0]}", empties[0])
    report.drop(reason, line)
    return None

  # Lengths.
  pm = _Measure(policy.max_prompt_chars, policy.max_prompt_tokens, tokenizer)
  rm = _Measure(policy.max_response_chars, policy.max_response_tokens, tokenizer)
  checks = [("prompt", pm, _prompt_texts(example.prompt))] + [
      (f, rm, [getattr(example, f)]) for f in fields]
  for field, measure, texts in checks:
    if measure.fits(texts):
      continue
    reason = f"too_long_{field}"
    if policy.on_too_long == "error":
      fail(reason, f"{field} too long: {measure.describe(texts)}", field)
    if policy.on_too_long == "drop":
      report.drop(reason, line, measure.describe(texts))
      return None
    if field == "prompt":
      new = _truncate_prompt(example.prompt, measure)
    else:
      new = _longest_fitting(texts[0], lambda s, m=measure: m.fits([s]), keep_end=False)
    example = dataclasses.replace(example, **{field: new})
    report.truncate(field, line)

  # Identical responses.
  if len(fields) == 2 and getattr(example, fields[0]) == getattr(example, fields[1]):
    if policy.on_identical == "error":
      fail("identical_responses", f"{fields[0]} and {fields[1]} are identical", fields[1])
    if policy.on_identical == "drop":
      report.drop("identical_responses", line)
      return None
    report.warn(f"kept a pair with identical {fields[0]} and {fields[1]}", line)
  return example
