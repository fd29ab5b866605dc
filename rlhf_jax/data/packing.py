"""Sequence packing: several SFT (supervised fine-tuning) examples per fixed-length row.

Greedy first-fit: examples are taken in input order and each goes into the first row with room
for it, opening a new row when none has. Each row carries

  tokens_BxL       example tokens back to back, pad_id after the last one
  segment_ids_BxL  1, 2, 3, ... for the examples in the row (in placement order), 0 for padding
  positions_BxL    0, 1, 2, ... restarting at every segment, 0 for padding
  loss_mask_BxL    the examples' loss masks, with each segment's first token set to 0

The attention mask of a packed row must only let a token see earlier tokens of its own segment
(`segment_ids[q] == segment_ids[k]`). A segment's first token is never a target: the logits that
would predict it belong to the previous segment, so its loss mask is cleared even for a loss that
shifts targets without looking at segment ids.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, NamedTuple, Sequence

import numpy as np

from rlhf_jax.data.batching import as_token_ids, pick_bucket

Overlong = Literal["error", "skip", "truncate"]


class PackedRows(NamedTuple):
  """The arrays a packed training step consumes (B rows of length L, int32)."""
  tokens_BxL: np.ndarray
  segment_ids_BxL: np.ndarray
  positions_BxL: np.ndarray
  loss_mask_BxL: np.ndarray


@dataclasses.dataclass(frozen=True)
class PackResult:
  """Packed rows plus where each example went.

  Attributes:
    rows: the packed arrays.
    placements: int32 [num_placed, 4], one line per placed example in input order, with columns
      (row, start column, length, input index).
    skipped: input indices that were not placed (too long with overlong="skip", or no room left
      when num_rows is fixed).
    truncated: input indices that were cut to the row length (overlong="truncate").
  """
  rows: PackedRows
  placements: np.ndarray
  skipped: tuple[int, ...]
  truncated: tuple[int, ...]

  @property
  def efficiency(self) -> float:
    """Fraction of token slots holding real tokens: sum(segment_ids > 0) / (B * L)."""
    segment_ids = self.rows.segment_ids_BxL
    return float(np.count_nonzero(segment_ids)) / max(segment_ids.size, 1)


def pack_sequences(token_ids: Sequence[Any], loss_masks: Sequence[Any], *, row_length: int,
                   pad_id: int, num_rows: int | None = None, overlong: Overlong = "error",
                   example_ids: Sequence[Any] | None = None) -> PackResult:
  """Packs variable-length examples into rows of `row_length` tokens by greedy first-fit.

  Args:
    token_ids: one token sequence per example.
    loss_masks: matching 0/1 loss masks.
    row_length: L, the packed row length.
    pad_id: token id written on padding.
    num_rows: fixed number of rows B (examples that find no room are skipped, and unused rows are
      all padding); None opens as many rows as needed.
    overlong: what to do with an example longer than a row: "error" (ValueError naming it),
      "skip", or "truncate" (keep its first row_length tokens).
    example_ids: names used in error messages (default: input index).

  Returns:
    A `PackResult`; `unpack_sequences(result)` recovers the placed examples.

  Example:
    r = pack_sequences([[1, 2, 3], [4, 5], [6]], [[0, 1, 1], [0, 1], [1]], row_length=4, pad_id=0)
    # r.rows.tokens_BxL      [[1, 2, 3, 6], [4, 5, 0, 0]]
    # r.rows.segment_ids_BxL [[1, 1, 1, 2], [1, 1, 0, 0]]
    # r.rows.positions_BxL   [[0, 1, 2, 0], [0, 1, 0, 0]]
    # r.rows.loss_mask_BxL   [[0, 1, 1, 0], [0, 1, 0, 0]]
  """
  if row_length < 1:
    raise ValueError(f"row_length must be >= 1, got {row_length}")
  if num_rows is not None and num_rows < 1:
    raise ValueError(f"num_rows must be >= 1 or None, got {num_rows}")
  if overlong not in ("error", "skip", "truncate"):
    raise ValueError(f"overlong must be 'error', 'skip' or 'truncate', got {overlong!r}")
  if len(loss_masks) != len(token_ids):
    raise ValueError(f"got {len(loss_masks)} loss masks for {len(token_ids)} examples")
  if example_ids is not None and len(example_ids) != len(token_ids):
    raise ValueError(f"got {len(example_ids)} example_ids for {len(token_ids)} examples")

  free: list[int] = []                   # free columns per open row
  contents: list[list[tuple[int, np.ndarray, np.ndarray]]] = []  # (input index, tokens, mask)
  skipped, truncated = [], []
  for index, (ids, mask) in enumerate(zip(token_ids, loss_masks)):
    name = example_ids[index] if example_ids is not None else index
    tokens = as_token_ids(ids, f"tokens of example {name!r}")
    mask = as_token_ids(mask, f"loss mask of example {name!r}")
    if tokens.shape != mask.shape:
      raise ValueError(f"example {name!r}: {len(tokens)} tokens but {len(mask)} loss-mask entries")
    if np.any((mask != 0) & (mask != 1)):
      raise ValueError(f"example {name!r}: loss mask must hold only 0 and 1")
    if len(tokens) == 0:
      raise ValueError(f"example {name!r} has no tokens")
    if len(tokens) > row_length:
      if overlong == "error":
        raise ValueError(f"example {name!r} has {len(tokens)} tokens, more than row_length "
                         f"{row_length}; pass overlong='skip' or 'truncate'")
      if overlong == "skip":
        skipped.append(index)
        continue
      tokens, mask = tokens[:row_length], mask[:row_length]
      truncated.append(index)
    row = next((r for r, room in enumerate(free) if room >= len(tokens)), None)
    if row is None:
      if num_rows is not None and len(free) == num_rows:
        skipped.append(index)
        continue
      free.append(row_length)
      contents.append([])
      row = len(free) - 1
    contents[row].append((index, tokens, mask))
    free[row] -= len(tokens)

  total_rows = num_rows if num_rows is not None else len(contents)
  shape = (total_rows, row_length)
  tokens_BxL = np.full(shape, pad_id, np.int32)
  segment_ids_BxL = np.zeros(shape, np.int32)
  positions_BxL = np.zeros(shape, np.int32)
  loss_mask_BxL = np.zeros(shape, np.int32)
  placements = []
  for row, items in enumerate(contents):
    start = 0
    for segment, (index, tokens, mask) in enumerate(items, start=1):
      stop = start + len(tokens)
      tokens_BxL[row, start:stop] = tokens
      segment_ids_BxL[row, start:stop] = segment
      positions_BxL[row, start:stop] = np.arange(len(tokens))
      loss_mask_BxL[row, start:stop] = mask
      loss_mask_BxL[row, start] = 0
      placements.append((row, start, len(tokens), index))
      start = stop
  placements_array = np.asarray(sorted(placements, key=lambda p: p[3]), np.int32).reshape(-1, 4)
  return PackResult(PackedRows(tokens_BxL, segment_ids_BxL, positions_BxL, loss_mask_BxL),
                    placements_array, tuple(skipped), tuple(truncated))


def unpack_sequences(result: PackResult) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """Recovers {input index: (tokens, loss_mask)} from the segment ids of packed rows.

  Segments are read from `segment_ids_BxL` alone (each must be one contiguous run); the
  placements only name which input each segment came from.
  """
  by_start = {(int(row), int(start)): (int(length), int(index))
              for row, start, length, index in result.placements}
  recovered = {}
  rows = result.rows
  for row, segment_ids in enumerate(rows.segment_ids_BxL):
    for segment in np.unique(segment_ids[segment_ids > 0]):
      columns = np.flatnonzero(segment_ids == segment)
      start, stop = int(columns[0]), int(columns[-1]) + 1
      if len(columns) != stop - start:
        raise ValueError(f"row {row}: segment {segment} is not contiguous")
      if (row, start) not in by_start or by_start[(row, start)][0] != stop - start:
        raise ValueError(f"row {row}: segment {segment} at column {start} matches no placement")
      index = by_start[(row, start)][1]
      recovered[index] = (rows.tokens_BxL[row, start:stop].copy(),
                          rows.loss_mask_BxL[row, start:stop].copy())
  return recovered


def collate_packed_sft(examples: Sequence[Mapping[str, Any]], *, row_length: int, pad_id: int,
                       row_buckets: Sequence[int]) -> PackedRows:
  """Batch function: packs SFT records ("token_ids", "loss_mask") first-fit into rows.

  The row count is padded up to the smallest of `row_buckets` that holds the packed rows, so a
  jitted step sees only a few shapes; the extra rows are all padding (segment id 0, loss mask 0).
  An example longer than `row_length` raises, naming it.

  Example:
    collate_packed_sft([{"token_ids": [1, 2], "loss_mask": [0, 1]}] * 3, row_length=4, pad_id=0,
                       row_buckets=(1, 2, 4)).tokens_BxL   # [[1, 2, 1, 2], [1, 2, 0, 0]]
  """
  result = pack_sequences(
      [e["token_ids"] for e in examples], [e["loss_mask"] for e in examples],
      row_length=row_length, pad_id=pad_id, overlong="error",
      example_ids=[e.get("id", f"#{i}") for i, e in enumerate(examples)])
  rows = result.rows
  extra = pick_bucket(rows.tokens_BxL.shape[0], row_buckets) - rows.tokens_BxL.shape[0]
  if not extra:
    return rows
  return PackedRows(*(np.pad(x, ((0, extra), (0, 0)), constant_values=pad_id if i == 0 else 0)
                      for i, x in enumerate(rows)))
