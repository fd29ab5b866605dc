"""Host-side padding into a few fixed shapes ("buckets") so jitted steps compile once per bucket.

NumPy in, NumPy out. Letters: B rows, L padded row length, P padded prompt length.

  * Prompts for generation are LEFT-padded: every prompt ends at the last column, where sampling
    continues. Position ids come from the mask: `cumsum(mask) - mask`, so the first real token is
    at position 0 whatever the padding.
  * Training rows are RIGHT-padded: tokens, positions, segment ids (1 real token, 0 padding),
    a loss mask and the index of the last real token of each row (where a reward model or value
    head reads its score).
  * Preference pairs use the concatenated layout of reward-model and DPO (Direct Preference
    Optimization) steps: 2B rows, rows [0, B) are prompt + chosen and rows [B, 2B) prompt +
    rejected, all padded to one bucket; the loss mask marks the response tokens.

Mask convention: `loss_mask[b, t] = 1` when token t is a target, i.e. its log-probability (read
from the logits at t - 1) enters the loss. Every integer output is int32.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

TokenIds = Sequence[int] | np.ndarray


def bucket_lengths(max_len: int, *, multiple: int | None = None, min_len: int = 16
                   ) -> tuple[int, ...]:
  """A small ascending set of padded lengths ending at max_len.

  Args:
    max_len: the longest padded length (always the last bucket).
    multiple: if given, buckets are multiple, 2 * multiple, ... (then max_len); otherwise powers
      of two from min_len (then max_len).
    min_len: smallest power-of-two bucket.

  Example:
    bucket_lengths(512) == (16, 32, 64, 128, 256, 512)
    bucket_lengths(200, multiple=64) == (64, 128, 192, 200)
  """
  if max_len < 1:
    raise ValueError(f"max_len must be >= 1, got {max_len}")
  if multiple is not None:
    if multiple < 1:
      raise ValueError(f"multiple must be >= 1, got {multiple}")
    lengths = list(range(multiple, max_len, multiple))
  else:
    if min_len < 1:
      raise ValueError(f"min_len must be >= 1, got {min_len}")
    lengths, length = [], 1 << (min_len - 1).bit_length()
    while length < max_len:
      lengths.append(length)
      length *= 2
  return tuple(lengths) + (max_len,)


def pick_bucket(length: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= length."""
  fitting = [bucket for bucket in buckets if bucket >= length]
  if not fitting:
    raise ValueError(f"length {length} exceeds the largest bucket {max(buckets)}")
  return min(fitting)


def positions_from_mask(mask_BxL: np.ndarray) -> np.ndarray:
  """Position ids `cumsum(mask) - mask` on real tokens (0, 1, 2, ...), 0 on padding."""
  mask_BxL = np.asarray(mask_BxL, np.int32)
  return ((np.cumsum(mask_BxL, axis=-1) - mask_BxL) * mask_BxL).astype(np.int32)


def as_token_ids(ids: TokenIds, what: str) -> np.ndarray:
  """A flat int32 array of token ids; `what` names the input in the error."""
  array = np.asarray(ids)
  if array.size == 0:
    return np.zeros((0,), np.int32)
  if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"{what} must be a flat sequence of ints, got dtype {array.dtype} and shape "
                     f"{array.shape}")
  return array.astype(np.int32)


def _example_id(example_ids: Sequence[Any] | None, index: int) -> Any:
  return example_ids[index] if example_ids is not None else f"#{index}"


def _check_count(what: str, items: Sequence[Any], expected: int) -> None:
  if len(items) != expected:
    raise ValueError(f"got {len(items)} {what} for {expected} rows")


def _fit(lengths: Sequence[int], buckets: Sequence[int], example_ids: Sequence[Any] | None,
         describe: Sequence[str]) -> int:
  """The bucket for the longest row; over-long rows raise naming the example and its length."""
  if not lengths:
    raise ValueError("cannot pad an empty batch")
  largest = max(buckets)
  for index, length in enumerate(lengths):
    if length > largest:
      raise ValueError(f"example {_example_id(example_ids, index)!r}: {describe[index]} = {length} "
                       f"tokens exceeds the largest bucket {largest}")
    if length == 0:
      raise ValueError(f"example {_example_id(example_ids, index)!r} has no tokens")
  return pick_bucket(max(lengths), buckets)


class PromptBatch(NamedTuple):
  """Left-padded prompts for generation."""
  tokens_BxP: np.ndarray     # pad_id on padding
  mask_BxP: np.ndarray       # 1 real token, 0 padding
  positions_BxP: np.ndarray  # cumsum(mask) - mask on real tokens, 0 on padding


class SequenceBatch(NamedTuple):
  """Right-padded training rows."""
  tokens_BxL: np.ndarray       # pad_id on padding
  positions_BxL: np.ndarray    # 0, 1, 2, ... on real tokens, 0 on padding
  segment_ids_BxL: np.ndarray  # 1 real token, 0 padding
  loss_mask_BxL: np.ndarray    # 1 where the token is a target
  last_index_B: np.ndarray     # column of the last real token


class PreferenceBatch(NamedTuple):
  """Pairs in the concatenated layout: `rows` has 2B rows, [chosen; rejected]."""
  rows: SequenceBatch
  weight_B: np.ndarray      # float32 per-pair weight (1 when not given)
  confidence_B: np.ndarray  # float32 label confidence (1 when not given)
  tie_B: np.ndarray         # bool, the annotator saw no preference
  margin_B: np.ndarray      # float32 preference strength for margin losses (0 when not given)


def pad_prompts(prompts: Sequence[TokenIds], *, buckets: Sequence[int], pad_id: int,
                example_ids: Sequence[Any] | None = None) -> PromptBatch:
  """Left-pads prompts to the smallest bucket that fits the longest one.

  Example:
    pad_prompts([[5, 6], [7]], buckets=(4,), pad_id=0).tokens_BxP == [[0, 0, 5, 6], [0, 0, 0, 7]]
  """
  rows = [as_token_ids(p, f"prompt of example {_example_id(example_ids, i)!r}")
          for i, p in enumerate(prompts)]
  if example_ids is not None:
    _check_count("example_ids", example_ids, len(rows))
  length = _fit([len(r) for r in rows], buckets, example_ids, ["prompt"] * len(rows))
  tokens_BxP = np.full((len(rows), length), pad_id, np.int32)
  mask_BxP = np.zeros((len(rows), length), np.int32)
  for b, row in enumerate(rows):
    if len(row):
      tokens_BxP[b, length - len(row):] = row
      mask_BxP[b, length - len(row):] = 1
  return PromptBatch(tokens_BxP, mask_BxP, positions_from_mask(mask_BxP))


def _right_pad(pieces: Sequence[Sequence[np.ndarray]], masks: Sequence[Sequence[np.ndarray]],
               length: int, pad_id: int) -> SequenceBatch:
  """Concatenates each row's pieces (and their loss masks) and right-pads to `length`."""
  num_rows = len(pieces)
  tokens_BxL = np.full((num_rows, length), pad_id, np.int32)
  segment_ids_BxL = np.zeros((num_rows, length), np.int32)
  loss_mask_BxL = np.zeros((num_rows, length), np.int32)
  last_index_B = np.zeros((num_rows,), np.int32)
  for b, (row_pieces, row_masks) in enumerate(zip(pieces, masks)):
    row = np.concatenate(row_pieces)
    tokens_BxL[b, :len(row)] = row
    segment_ids_BxL[b, :len(row)] = 1
    loss_mask_BxL[b, :len(row)] = np.concatenate(row_masks)
    last_index_B[b] = len(row) - 1
  return SequenceBatch(tokens_BxL, positions_from_mask(segment_ids_BxL), segment_ids_BxL,
                       loss_mask_BxL, last_index_B)


def pad_sequences(token_ids: Sequence[TokenIds], loss_masks: Sequence[TokenIds], *,
                  buckets: Sequence[int], pad_id: int,
                  example_ids: Sequence[Any] | None = None) -> SequenceBatch:
  """Right-pads SFT (supervised fine-tuning) rows with their 0/1 loss masks.

  Example:
    pad_sequences([[5, 6, 7]], [[0, 1, 1]], buckets=(4,), pad_id=0)
    # tokens [[5, 6, 7, 0]], positions [[0, 1, 2, 0]], segment_ids [[1, 1, 1, 0]],
    # loss_mask [[0, 1, 1, 0]], last_index [2]
  """
  _check_count("loss masks", loss_masks, len(token_ids))
  if example_ids is not None:
    _check_count("example_ids", example_ids, len(token_ids))
  rows, masks = [], []
  for i, (ids, mask) in enumerate(zip(token_ids, loss_masks)):
    name = _example_id(example_ids, i)
    row, mask = as_token_ids(ids, f"tokens of example {name!r}"), as_token_ids(mask, f"mask of {name!r}")
    if row.shape != mask.shape:
      raise ValueError(f"example {name!r}: {len(row)} tokens but {len(mask)} loss-mask entries")
    if np.any((mask != 0) & (mask != 1)):
      raise ValueError(f"example {name!r}: loss mask must hold only 0 and 1")
    rows.append([row])
    masks.append([mask])
  length = _fit([len(r[0]) for r in rows], buckets, example_ids, ["sequence"] * len(rows))
  return _right_pad(rows, masks, length, pad_id)


def pad_preference_pairs(prompt_ids: Sequence[TokenIds], chosen_ids: Sequence[TokenIds],
                         rejected_ids: Sequence[TokenIds], *, buckets: Sequence[int], pad_id: int,
                         example_ids: Sequence[Any] | None = None) -> SequenceBatch:
  """Builds the [prompt + chosen; prompt + rejected] rows (2B of them) in one bucket.

  The loss mask is 1 on response tokens (chosen or rejected), 0 on the prompt and padding. An
  empty response gives an all-zero loss-mask row whose last index is the last prompt token.

  Example:
    pad_preference_pairs([[1, 2]], [[3]], [[4, 5]], buckets=(4,), pad_id=0)
    # tokens [[1, 2, 3, 0], [1, 2, 4, 5]], loss_mask [[0, 0, 1, 0], [0, 0, 1, 1]],
    # last_index [2, 3]
  """
  num_pairs = len(prompt_ids)
  _check_count("chosen responses", chosen_ids, num_pairs)
  _check_count("rejected responses", rejected_ids, num_pairs)
  if example_ids is not None:
    _check_count("example_ids", example_ids, num_pairs)
  pieces, masks, lengths, describe = [], [], [], []
  for label, responses in (("chosen", chosen_ids), ("rejected", rejected_ids)):
    for i in range(num_pairs):
      name = _example_id(example_ids, i)
      prompt = as_token_ids(prompt_ids[i], f"prompt of example {name!r}")
      response = as_token_ids(responses[i], f"{label} response of example {name!r}")
      pieces.append([prompt, response])
      masks.append([np.zeros_like(prompt), np.ones_like(response)])
      lengths.append(len(prompt) + len(response))
      describe.append(f"prompt {len(prompt)} + {label} {len(response)}")
  ids_twice = None if example_ids is None else list(example_ids) * 2
  length = _fit(lengths, buckets, ids_twice, describe)
  return _right_pad(pieces, masks, length, pad_id)


def _field(examples: Sequence[Mapping[str, Any]], name: str) -> list[Any]:
  try:
    return [example[name] for example in examples]
  except KeyError:
    raise KeyError(f"examples lack field {name!r} (have {sorted(examples[0])}); build the dataset "
                   "with token ids") from None


def _ids(examples: Sequence[Mapping[str, Any]]) -> list[Any]:
  return [example.get("id", f"#{i}") for i, example in enumerate(examples)]


def collate_prompts(examples: Sequence[Mapping[str, Any]], *, buckets: Sequence[int],
                    pad_id: int) -> PromptBatch:
  """Batch function for prompt records ("prompt_ids"), e.g. as `make_loader(batch_fn=...)`."""
  return pad_prompts(_field(examples, "prompt_ids"), buckets=buckets, pad_id=pad_id,
                     example_ids=_ids(examples))


def collate_sft(examples: Sequence[Mapping[str, Any]], *, buckets: Sequence[int],
                pad_id: int) -> SequenceBatch:
  """Batch function for SFT records ("token_ids", "loss_mask")."""
  return pad_sequences(_field(examples, "token_ids"), _field(examples, "loss_mask"),
                       buckets=buckets, pad_id=pad_id, example_ids=_ids(examples))


def collate_preferences(examples: Sequence[Mapping[str, Any]], *, buckets: Sequence[int],
                        pad_id: int) -> PreferenceBatch:
  """Batch function for preference records ("prompt_ids", "chosen_ids", "rejected_ids").

  Optional "weight", "confidence" (default 1), "margin" (default 0) and "tie" (default False)
  fill the per-pair arrays; None counts as missing.
  """
  rows = pad_preference_pairs(
      _field(examples, "prompt_ids"), _field(examples, "chosen_ids"),
      _field(examples, "rejected_ids"), buckets=buckets, pad_id=pad_id,
      example_ids=_ids(examples))
  return PreferenceBatch(
      rows=rows,
      weight_B=_floats(examples, "weight", 1.0),
      confidence_B=_floats(examples, "confidence", 1.0),
      tie_B=np.asarray([bool(e.get("tie", False)) for e in examples], np.bool_),
      margin_B=_floats(examples, "margin", 0.0))


def _floats(examples: Sequence[Mapping[str, Any]], name: str, default: float) -> np.ndarray:
  """float32 values of an optional field; missing or None gives the default."""
  return np.asarray([default if e.get(name) is None else e[name] for e in examples], np.float32)
