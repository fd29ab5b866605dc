"""What the server serves: the `Scorer` protocol, a deterministic toy scorer and a model adapter.

A scorer maps a batch of (prompt, response) pairs to per-item outputs. The server only relies on
the small protocol below, so the reward model plugs in by wrapping its in-process batched scoring
function with `ModelScorer`:

    scorer = ModelScorer(name="rm", version=directory_version(ckpt_dir),
                         score_fn=reward_model.score, tokenizer=tok, max_seq_len=1024,
                         max_batch_size=32)

Outputs (all float arrays of shape [B], B = batch size):
  score       always; the reward a trainer should use
  raw         optional; the uncalibrated head output
  normalized  optional; the score after the model's reward normalisation
  std         optional; the spread of an ensemble's members (epistemic uncertainty)

`HashScorer` is a deterministic stand-in used by tests, demos and the load test: its outputs are a
pure function of (salt, offset, prompt, response), so any process can recompute the expected
answer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import time
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

OUTPUT_KEYS = ("score", "raw", "normalized", "std")


class InputTooLongError(ValueError):
  """An item is longer than the scorer accepts (the server answers 422 input_too_long)."""


@runtime_checkable
class Scorer(Protocol):
  """A batched reward scorer for one model version (see the module docstring)."""

  name: str
  version: str  # content-hash id of the checkpoint
  max_batch_size: int  # largest batch score_batch accepts
  max_seq_len: int  # longest prompt + response, in the scorer's own units (tokens)

  def score_batch(self, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
    """Outputs for B pairs: always "score" [B]; optionally "raw", "normalized", "std" [B]."""
    ...

  def validate(self, prompt: str, response: str) -> None:
    """Raises ValueError (InputTooLongError for length) naming the problem with one item."""
    ...


def content_version(*parts: str | bytes) -> str:
  """16 hex digits of the sha256 of length-prefixed parts (so ("ab", "c") != ("a", "bc"))."""
  h = hashlib.sha256()
  for part in parts:
    data = part.encode() if isinstance(part, str) else bytes(part)
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)
  return h.hexdigest()[:16]


def directory_version(path: str | os.PathLike) -> str:
  """Content-hash id of a checkpoint: its files' relative paths and bytes, in sorted order.

  Raises:
    FileNotFoundError: when `path` does not exist or holds no files.
  """
  root = pathlib.Path(path)
  files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
  if not files:
    raise FileNotFoundError(f"{root}: no checkpoint files to hash")
  parts: list[str | bytes] = []
  for f in files:
    parts += [f.relative_to(root).as_posix() if f != root else f.name, f.read_bytes()]
  return content_version(*parts)


def check_outputs(outputs: Mapping[str, Any], batch_size: int) -> dict[str, np.ndarray]:
  """float64 copies of a scorer's outputs, after checking that each is a [B] array.

  Non-finite values are kept: the batcher fails only the items that carry them.

  Raises:
    ValueError: when "score" is missing, a key is unknown, or an output is not of shape [B].
  """
  if not isinstance(outputs, Mapping):
    raise ValueError(f"score_batch must return a dict of arrays, got {type(outputs).__name__}")
  if "score" not in outputs:
    raise ValueError(f"score_batch returned no 'score' (keys: {sorted(outputs)})")
  checked = {}
  for key, value in outputs.items():
    if key not in OUTPUT_KEYS:
      raise ValueError(f"score_batch returned unknown output {key!r}; known: {OUTPUT_KEYS}")
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (batch_size,):
      raise ValueError(f"score_batch output {key!r} has shape {arr.shape}, "
                       f"expected ({batch_size},)")
    checked[key] = arr
  return checked


def _check_texts(prompt: Any, response: Any) -> None:
  for field, value in (("prompt", prompt), ("response", response)):
    if not isinstance(value, str):
      raise ValueError(f"{field} must be a string, got {type(value).__name__}")


@dataclasses.dataclass
class HashScorer:
  """Deterministic toy scorer: an ensemble of hash-seeded members, no model.

  Member e gives  r_e = sqrt(12) * (u_e - 1/2) + offset,  u_e = content_version(salt, e, prompt,
  response) (64 bits) read as a fraction in [0, 1); so each member has mean
  `offset` and unit variance over distinct pairs. Outputs: score = raw = mean_e r_e;
  normalized = (raw - offset) * sqrt(E); std = the population std of the members (E > 1 only).
  Lengths are counted in UTF-8 bytes of prompt + response.

  Example:
    s = HashScorer(name="toy", salt="a")
    s.score_batch(["Hi"], ["Hello!"])["score"]   # the same value in every process
  """

  name: str = "toy"
  salt: str = "0"
  offset: float = 0.0  # mean score; versions with different offsets have shifted distributions
  ensemble_size: int = 4  # members averaged; > 1 also returns "std"
  max_batch_size: int = 64
  max_seq_len: int = 4096  # UTF-8 bytes of prompt + response
  batch_delay_s: float = 0.0  # sleep per score_batch call, to simulate model compute
  version: str = ""  # content hash of (salt, offset, ensemble_size) when left empty

  def __post_init__(self):
    if self.ensemble_size < 1:
      raise ValueError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
    if not self.version:
      self.version = content_version("hash-scorer", self.salt, repr(float(self.offset)),
                                     str(self.ensemble_size))

  def validate(self, prompt: str, response: str) -> None:
    _check_texts(prompt, response)
    n = len(prompt.encode()) + len(response.encode())
    if n > self.max_seq_len:
      raise InputTooLongError(f"prompt + response is {n} bytes, over the model's max_seq_len "
                              f"of {self.max_seq_len}")

  def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
    if len(prompts) != len(responses):
      raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    if self.batch_delay_s:
      time.sleep(self.batch_delay_s)
    members_BxE = np.empty((len(prompts), self.ensemble_size), np.float64)
    for b, (p, r) in enumerate(zip(prompts, responses)):
      for e in range(self.ensemble_size):
        u = int(content_version(self.salt, str(e), p, r), 16) / 2.0**64
        members_BxE[b, e] = np.sqrt(12.0) * (u - 0.5) + self.offset
    raw_B = members_BxE.mean(axis=1)
    out = {"score": raw_B, "raw": raw_B.copy(),
           "normalized": (raw_B - self.offset) * np.sqrt(self.ensemble_size)}
    if self.ensemble_size > 1:
      out["std"] = members_BxE.std(axis=1)
    return out


class ModelScorer:
  """Adapts any batched `score_fn(prompts, responses) -> dict` to the Scorer protocol.

  Lengths are checked with the model's tokenizer before an item is queued:
  len(encode(prompt)) + len(encode(response)) + num_special_tokens <= max_seq_len (separately
  tokenised pieces concatenate to the tokens of the joined text with this library's tokenizers).

  Args:
    name: model name clients ask for.
    version: content-hash id of the checkpoint (e.g. `directory_version(path)`).
    score_fn: batched scorer; returns at least {"score": [B]}.
    tokenizer: anything with `encode(str) -> list[int]` (`rlhf_jax.data.tokenizer.Tokenizer`).
    max_seq_len: longest accepted item in tokens, special tokens included.
    max_batch_size: largest batch passed to score_fn.
    num_special_tokens: tokens score_fn adds per item (BOS and EOS: 2).
    validate_fn: optional extra per-item check raising ValueError (e.g. a prompt format).
  """

  def __init__(self, name: str, version: str,
               score_fn: Callable[[list[str], list[str]], Mapping[str, Any]], tokenizer: Any, *,
               max_seq_len: int, max_batch_size: int, num_special_tokens: int = 2,
               validate_fn: Optional[Callable[[str, str], None]] = None):
    if max_seq_len <= num_special_tokens or max_batch_size < 1:
      raise ValueError(f"need max_seq_len > num_special_tokens and max_batch_size >= 1, got "
                       f"{max_seq_len}, {num_special_tokens}, {max_batch_size}")
    self.name, self.version = name, version
    self.max_seq_len, self.max_batch_size = max_seq_len, max_batch_size
    self._score_fn, self._tokenizer = score_fn, tokenizer
    self._num_special = num_special_tokens
    self._validate_fn = validate_fn

  def token_length(self, prompt: str, response: str) -> int:
    """Tokens the model sees for one item, special tokens included."""
    return (len(self._tokenizer.encode(prompt)) + len(self._tokenizer.encode(response))
            + self._num_special)

  def validate(self, prompt: str, response: str) -> None:
    _check_texts(prompt, response)
    n = self.token_length(prompt, response)
    if n > self.max_seq_len:
      raise InputTooLongError(f"prompt + response is {n} tokens (with {self._num_special} "
                              f"special), over the model's max_seq_len of {self.max_seq_len}")
    if self._validate_fn is not None:
      self._validate_fn(prompt, response)

  def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, np.ndarray]:
    if len(prompts) > self.max_batch_size:
      raise ValueError(f"batch of {len(prompts)} exceeds max_batch_size {self.max_batch_size}")
    outputs = self._score_fn(list(prompts), list(responses))
    return {k: np.asarray(v) for k, v in outputs.items()}

  def __repr__(self) -> str:
    return (f"ModelScorer(name={self.name!r}, version={self.version!r}, "
            f"max_seq_len={self.max_seq_len}, max_batch_size={self.max_batch_size})")
