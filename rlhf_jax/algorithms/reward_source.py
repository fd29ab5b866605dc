"""One interface for every source of reward: a frozen reward model, the lab's gold reward, a
verifier, a remote reward service, or any Python function.

A reward source takes a `ScoringBatch` (texts and token ids of prompts and responses, so each source
uses whichever it needs) and returns one float32 score per row. A source that cannot score a row
raises; it never returns 0 or NaN in place of a failure (a trainer would learn from made-up rewards).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Protocol, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ScoringBatch:
  prompts: Sequence[str]
  responses: Sequence[str]
  prompt_tokens_BxP: Optional[np.ndarray] = None  # left-padded prompt ids
  prompt_mask_BxP: Optional[np.ndarray] = None
  response_tokens_BxS: Optional[np.ndarray] = None  # right-padded response ids (EOS included)
  response_mask_BxS: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.prompts)


class RewardSource(Protocol):
  name: str

  def __call__(self, batch: ScoringBatch) -> np.ndarray:
    """Scores [B] float32; raises RewardError on failure."""


class RewardError(RuntimeError):
  """A reward could not be computed (never silently replaced by a number)."""


def check_scores(scores, batch: ScoringBatch, source: str) -> np.ndarray:
  """Validates a source's output: one finite float per row."""
  scores = np.asarray(scores, dtype=np.float32)
  if scores.shape != (len(batch),):
    raise RewardError(f"reward source {source!r} returned shape {scores.shape}, expected ({len(batch)},)")
  bad = np.flatnonzero(~np.isfinite(scores))
  if bad.size:
    raise RewardError(f"reward source {source!r} returned non-finite scores for rows {bad[:10].tolist()}")
  return scores


@dataclasses.dataclass
class TextRewardFn:
  """Wraps `fn(prompts, responses) -> scores` (gold reward, verifier, remote client, any function)."""
  fn: Callable[[Sequence[str], Sequence[str]], np.ndarray]
  name: str = "text_fn"

  def __call__(self, batch: ScoringBatch) -> np.ndarray:
    return check_scores(self.fn(list(batch.prompts), list(batch.responses)), batch, self.name)


@dataclasses.dataclass
class TokenRewardFn:
  """Wraps `fn(prompt_tokens_BxP, prompt_mask_BxP, response_tokens_BxS, response_mask_BxS) -> scores`,
  e.g. a jitted reward model scoring token ids directly (no detokenise/re-tokenise round trip)."""
  fn: Callable[..., np.ndarray]
  name: str = "token_fn"

  def __call__(self, batch: ScoringBatch) -> np.ndarray:
    if batch.response_tokens_BxS is None:
      raise RewardError(f"reward source {self.name!r} needs token ids in the ScoringBatch")
    return check_scores(self.fn(batch.prompt_tokens_BxP, batch.prompt_mask_BxP, batch.response_tokens_BxS,
                                batch.response_mask_BxS), batch, self.name)
