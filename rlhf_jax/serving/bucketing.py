"""Bucketed token batches, so a jitted reward function compiles once per bucket, not per request.

The dynamic batcher hands a scorer batches of any size from 1 to max_batch_size, holding texts of
any length. Feeding those shapes straight into `jax.jit` would compile a new program for nearly
every batch. `bucketed_score_fn` tokenises a batch, right-pads it to the smallest (batch bucket,
length bucket) that fits, calls the jitted function and drops the padding rows, so the number of
compiled programs is at most len(batch_buckets) * len(length_buckets).

Shape letters: B batch (a batch bucket), L sequence (a length bucket).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np


def bucket_for(n: int, buckets: Sequence[int], what: str = "size") -> int:
  """Smallest bucket >= n.

  Raises:
    ValueError: when n exceeds the largest bucket (naming `what`).
  """
  for b in sorted(buckets):
    if n <= b:
      return b
  raise ValueError(f"{what} {n} exceeds the largest bucket {max(buckets)}")


def pad_token_batch(token_lists: Sequence[Sequence[int]], *, batch_buckets: Sequence[int],
                    length_buckets: Sequence[int], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token lists into `(tokens_BxL int32, mask_BxL bool)` of bucketed shape.

  Padding rows (beyond len(token_lists)) are all pad with an all-False mask.
  """
  num = len(token_lists)
  batch = bucket_for(num, batch_buckets, "batch size")
  length = bucket_for(max((len(t) for t in token_lists), default=1), length_buckets,
                      "sequence length")
  tokens_BxL = np.full((batch, length), pad_id, np.int32)
  mask_BxL = np.zeros((batch, length), bool)
  for i, ids in enumerate(token_lists):
    tokens_BxL[i, :len(ids)] = ids
    mask_BxL[i, :len(ids)] = True
  return tokens_BxL, mask_BxL


def bucketed_score_fn(tokenizer: Any, token_score_fn: Callable[[Any, Any], Any], *,
                      batch_buckets: Sequence[int], length_buckets: Sequence[int],
                      add_bos: bool = True, add_eos: bool = True
                      ) -> Callable[[list[str], list[str]], dict[str, np.ndarray]]:
  """Wraps `token_score_fn(tokens_BxL, mask_BxL)` as a text scorer for `ModelScorer`.

  Each item is tokenised as [BOS] + prompt + response + [EOS] (the pieces are tokenised
  separately, which equals tokenising the joined text with this library's tokenizers).

  Args:
    tokenizer: `rlhf_jax.data.tokenizer.Tokenizer` (encode, pad_id, bos_id, eos_id).
    token_score_fn: usually a `jax.jit`-ed function returning a [B] array (taken as "score") or
      a dict of [B] arrays.
    batch_buckets: allowed padded batch sizes; the largest is the scorer's max batch size.
    length_buckets: allowed padded lengths; the largest is the scorer's max_seq_len.
    add_bos, add_eos: add the special tokens (ModelScorer's num_special_tokens must match).

  Returns:
    score_fn(prompts, responses) -> dict of float arrays [num_items] (padding rows dropped).
  """
  def score_fn(prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
    ids = []
    for prompt, response in zip(prompts, responses, strict=True):
      seq = tokenizer.encode(prompt) + tokenizer.encode(response)
      ids.append(([tokenizer.bos_id] if add_bos else []) + seq + ([tokenizer.eos_id] if add_eos
                                                                  else []))
    tokens_BxL, mask_BxL = pad_token_batch(ids, batch_buckets=batch_buckets,
                                           length_buckets=length_buckets,
                                           pad_id=tokenizer.pad_id)
    out = token_score_fn(tokens_BxL, mask_BxL)
    if not isinstance(out, Mapping):
      out = {"score": out}
    return {k: np.asarray(v)[:len(ids)] for k, v in out.items()}

  return score_fn
