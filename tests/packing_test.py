"""Tests for rlhf_jax.data.packing (greedy first-fit packing of SFT examples)."""
import numpy as np
import pytest

from rlhf_jax.data import packing

PAD = 0
L = 32


def _examples(seed, count, max_len):
  rng = np.random.default_rng(seed)
  tokens, masks = [], []
  for _ in range(count):
    n = int(rng.integers(1, max_len + 1))
    tokens.append(rng.integers(1, 500, size=n).tolist())
    prompt = int(rng.integers(0, n))
    masks.append([0] * prompt + [1] * (n - prompt))
  return tokens, masks


def _check_row_invariants(rows):
  for r in range(rows.tokens_BxL.shape[0]):
    seg, pos = rows.segment_ids_BxL[r], rows.positions_BxL[r]
    real = seg > 0
    n_real = int(real.sum())
    assert real[:n_real].all() and not real[n_real:].any(), "padding only after the last segment"
    assert (rows.tokens_BxL[r][~real] == PAD).all()
    assert (pos[~real] == 0).all() and (rows.loss_mask_BxL[r][~real] == 0).all()
    if n_real:
      assert seg[0] == 1 and set(np.diff(seg[:n_real])) <= {0, 1}, "segments 1, 2, 3, ..."
      starts = np.flatnonzero(np.diff(np.concatenate([[0], seg[:n_real]])) != 0)
      for start, stop in zip(starts, list(starts[1:]) + [n_real]):
        assert pos[start:stop].tolist() == list(range(stop - start)), "positions restart at 0"
        assert rows.loss_mask_BxL[r, start] == 0, "a segment's first token is never a target"


def test_unpacking_recovers_the_examples():
  tokens, masks = _examples(seed=0, count=60, max_len=L)
  result = packing.pack_sequences(tokens, masks, row_length=L, pad_id=PAD)
  assert not result.skipped and not result.truncated
  _check_row_invariants(result.rows)
  recovered = packing.unpack_sequences(result)
  assert sorted(recovered) == list(range(60))
  for i, (got_tokens, got_mask) in recovered.items():
    assert got_tokens.tolist() == tokens[i]
    assert got_mask.tolist() == [0] + masks[i][1:]
  assert result.placements[:, 3].tolist() == list(range(60))


def test_packing_efficiency_beats_padding_and_is_reported():
  tokens, _ = _examples(seed=1, count=200, max_len=L // 2)
  masks = [[1] * len(t) for t in tokens]
  result = packing.pack_sequences(tokens, masks, row_length=L, pad_id=PAD)
  real = sum(len(t) for t in tokens)
  num_rows = result.rows.tokens_BxL.shape[0]
  assert result.efficiency == pytest.approx(real / (num_rows * L))
  padded_efficiency = real / (len(tokens) * L)  # one example per row of length L
  assert result.efficiency > 0.9 > 0.5 > padded_efficiency
  assert num_rows >= int(np.ceil(real / L))  # no packer beats the token count
  print(f"packing efficiency {result.efficiency:.3f} ({num_rows} rows) vs padding "
        f"{padded_efficiency:.3f} ({len(tokens)} rows)")


def test_first_fit_on_a_hand_example():
  result = packing.pack_sequences([[1, 2, 3], [4, 5], [6], [7, 8]],
                                  [[0, 1, 1], [0, 1], [1], [1, 1]], row_length=4, pad_id=PAD)
  rows = result.rows
  np.testing.assert_array_equal(rows.tokens_BxL, [[1, 2, 3, 6], [4, 5, 7, 8]])
  np.testing.assert_array_equal(rows.segment_ids_BxL, [[1, 1, 1, 2], [1, 1, 2, 2]])
  np.testing.assert_array_equal(rows.positions_BxL, [[0, 1, 2, 0], [0, 1, 0, 1]])
  np.testing.assert_array_equal(rows.loss_mask_BxL, [[0, 1, 1, 0], [0, 1, 0, 1]])
  np.testing.assert_array_equal(result.placements, [[0, 0, 3, 0], [1, 0, 2, 1], [0, 3, 1, 2],
                                                    [1, 2, 2, 3]])
  assert result.efficiency == 1.0


def test_overlong_examples_error_skip_or_truncate():
  tokens, masks = [[1, 2], [3, 4, 5, 6, 7], [8]], [[0, 1], [0, 1, 1, 1, 1], [1]]
  with pytest.raises(ValueError, match="example 'long' has 5 tokens, more than row_length 4"):
    packing.pack_sequences(tokens, masks, row_length=4, pad_id=PAD,
                           example_ids=["a", "long", "c"])
  skipped = packing.pack_sequences(tokens, masks, row_length=4, pad_id=PAD, overlong="skip")
  assert skipped.skipped == (1,) and sorted(packing.unpack_sequences(skipped)) == [0, 2]
  cut = packing.pack_sequences(tokens, masks, row_length=4, pad_id=PAD, overlong="truncate")
  assert cut.truncated == (1,)
  assert packing.unpack_sequences(cut)[1][0].tolist() == [3, 4, 5, 6]


def test_fixed_number_of_rows_reports_what_did_not_fit():
  tokens, masks = _examples(seed=2, count=30, max_len=L)
  result = packing.pack_sequences(tokens, masks, row_length=L, pad_id=PAD, num_rows=4)
  assert result.rows.tokens_BxL.shape == (4, L)
  placed = set(result.placements[:, 3].tolist())
  assert placed and result.skipped and placed.isdisjoint(result.skipped)
  assert placed | set(result.skipped) == set(range(30))
  _check_row_invariants(result.rows)
  empty = packing.pack_sequences([[1]], [[1]], row_length=4, pad_id=PAD, num_rows=3)
  assert empty.rows.segment_ids_BxL[1:].sum() == 0  # unused rows are all padding


@pytest.mark.parametrize("tokens, masks, kwargs, message", [
    ([[1, 2]], [[1]], {}, "2 tokens but 1 loss-mask entries"),
    ([[1, 2]], [[1, 3]], {}, "only 0 and 1"),
    ([[]], [[]], {}, "has no tokens"),
    ([[1]], [[1], [1]], {}, "2 loss masks for 1 examples"),
    ([[1]], [[1]], dict(overlong="drop"), "overlong must be"),
    ([[1]], [[1]], dict(row_length=0), "row_length must be >= 1"),
    ([[1]], [[1]], dict(num_rows=0), "num_rows must be >= 1"),
])
def test_bad_inputs(tokens, masks, kwargs, message):
  args = dict(row_length=4, pad_id=PAD)
  with pytest.raises(ValueError, match=message):
    packing.pack_sequences(tokens, masks, **{**args, **kwargs})


def test_collate_packed_sft_pads_the_row_count_to_a_bucket():
  records = [{"id": f"e{i}", "token_ids": [i + 1] * 3, "loss_mask": [0, 1, 1]} for i in range(5)]
  rows = packing.collate_packed_sft(records, row_length=8, pad_id=PAD, row_buckets=(1, 2, 4, 8))
  # Two examples fit per row of 8: 3 rows are used, padded to the bucket of 4.
  np.testing.assert_array_equal(rows.tokens_BxL, [[1, 1, 1, 2, 2, 2, PAD, PAD],
                                                  [3, 3, 3, 4, 4, 4, PAD, PAD],
                                                  [5, 5, 5, PAD, PAD, PAD, PAD, PAD],
                                                  [PAD] * 8])
  np.testing.assert_array_equal(rows.segment_ids_BxL[:, :6], [[1, 1, 1, 2, 2, 2]] * 2 +
                                [[1, 1, 1, 0, 0, 0], [0] * 6])
  np.testing.assert_array_equal(rows.loss_mask_BxL[0], [0, 1, 1, 0, 1, 1, 0, 0])
  assert not rows.loss_mask_BxL[3].any() and not rows.positions_BxL[3].any()
  exact = packing.collate_packed_sft(records[:2], row_length=8, pad_id=PAD, row_buckets=(1, 2))
  assert exact.tokens_BxL.shape == (1, 8)
  with pytest.raises(ValueError, match="example 'e0' has 3 tokens, more than row_length 2"):
    packing.collate_packed_sft(records, row_length=2, pad_id=PAD, row_buckets=(8,))
