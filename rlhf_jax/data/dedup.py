"""Deduplication and prompt-disjoint train/eval splits.

Two keys:
  * "exact": the texts as they are.
  * "normalized": Unicode NFKC (compatibility normal form), case-folded, whitespace runs
    collapsed to one space and stripped, so "Hello  World" and "hello world" collide.
Conversational prompts are keyed on their (role, content) turns.

Dedup keeps the FIRST occurrence (input order) and removes later ones, hashing keys with sha256 so
memory stays one digest per distinct key. Removals are counted in an `IngestionReport` under
"duplicate_<mode>" (pairs) or "duplicate_prompt_<mode>" (prompts).

The split assigns each NORMALISED prompt to eval when a seeded hash of it falls below
`eval_fraction`, so all examples sharing a prompt (e.g. several responses to it, or the same
prompt differently spaced) land in the same split, and the split of a prompt never depends on
the rest of the data: adding records does not move existing prompts between splits.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable, Literal, Sequence, TypeVar

from rlhf_jax.data.schemas import Prompt
from rlhf_jax.data.validation import IngestionReport

Mode = Literal["exact", "normalized"]
T = TypeVar("T")

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
  """NFKC, case-fold, collapse whitespace runs to one space, strip."""
  return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _norm(mode: Mode):
  if mode == "exact":
    return lambda s: s
  if mode == "normalized":
    return normalize_text
  raise ValueError(f"dedup mode must be 'exact' or 'normalized', got {mode!r}")


def prompt_key(prompt: Prompt, mode: Mode = "normalized") -> str:
  """A hex digest identifying a prompt; plain text equals a single user turn with the same text."""
  norm = _norm(mode)
  turns = [("user", prompt)] if isinstance(prompt, str) else [(m.role, m.content) for m in prompt]
  return _digest([f"{role}\x1f{norm(content)}" for role, content in turns])


def pair_key(example, mode: Mode = "normalized") -> str:
  """A hex digest of (prompt, chosen, rejected), or (prompt, response) for SFT examples.

  Order matters: a swapped preference pair is a conflict, not a duplicate.
  """
  norm = _norm(mode)
  if hasattr(example, "chosen"):
    responses = [example.chosen, example.rejected]
  elif hasattr(example, "response"):
    responses = [example.response]
  else:
    raise TypeError("pair_key needs a PreferenceExample or SFTExample, got "
                    f"{type(example).__name__}")
  return _digest([prompt_key(example.prompt, mode)] + [norm(r) for r in responses])


def _digest(parts: Sequence[str]) -> str:
  h = hashlib.sha256()
  for p in parts:
    b = p.encode("utf-8")
    h.update(len(b).to_bytes(8, "little"))  # length-prefixed: ("ab", "c") != ("a", "bc")
    h.update(b)
  return h.hexdigest()


def _dedup(examples: Iterable[T], key, reason: str, report: IngestionReport | None) -> list[T]:
  seen: set[str] = set()
  kept = []
  removed = 0
  for ex in examples:
    k = key(ex)
    if k in seen:
      removed += 1
      continue
    seen.add(k)
    kept.append(ex)
  if report is not None:
    report.remove_kept(reason, removed)
  return kept


def dedup_pairs(examples: Iterable[T], mode: Mode = "normalized",
                report: IngestionReport | None = None) -> list[T]:
  """Removes repeated (prompt, chosen, rejected) triples (or SFT pairs), keeping the first.

  Example:
    dedup_pairs([p("Hi", "a", "b"), p("hi ", "A", "b")], "normalized")  -> first only
  """
  _norm(mode)
  return _dedup(examples, lambda e: pair_key(e, mode), f"duplicate_{mode}", report)


def dedup_prompts(examples: Iterable[T], mode: Mode = "normalized",
                  report: IngestionReport | None = None) -> list[T]:
  """Keeps the first example of each distinct prompt (any example type with `.prompt`)."""
  _norm(mode)
  return _dedup(examples, lambda e: prompt_key(e.prompt, mode), f"duplicate_prompt_{mode}", report)


def eval_score(prompt: Prompt, seed: int) -> float:
  """A uniform number in [0, 1) from the seed and the normalised prompt."""
  digest = hashlib.sha256(f"{seed}\x00{prompt_key(prompt, 'normalized')}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_by_prompt(examples: Iterable[T], eval_fraction: float, seed: int = 0
                    ) -> tuple[list[T], list[T]]:
  """Prompt-level (train, eval) split; no normalised prompt is in both. Order is kept.

  `eval_fraction` is the expected fraction of distinct prompts in eval (not exact for few prompts).
  """
  if not 0.0 <= eval_fraction <= 1.0:
    raise ValueError(f"eval_fraction must lie in [0, 1], got {eval_fraction}")
  train, evals = [], []
  for ex in examples:
    (evals if eval_score(ex.prompt, seed) < eval_fraction else train).append(ex)
  return train, evals


def check_prompt_disjoint(train: Iterable, evals: Iterable) -> None:
  """Raises ValueError when a (normalised) prompt occurs in both splits, naming one of them."""
  train_keys = {prompt_key(ex.prompt): ex for ex in train}
  overlap = [(train_keys[k], ex) for ex in evals if (k := prompt_key(ex.prompt)) in train_keys]
  if overlap:
    tr, ev = overlap[0]
    raise ValueError(f"{len(overlap)} eval examples share a prompt with train, e.g. eval id "
                     f"{getattr(ev, 'id', '?')!r} and train id {getattr(tr, 'id', '?')!r}: "
                     f"{str(ev.prompt)[:80]!r}")
