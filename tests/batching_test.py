"""Tests for rlhf_jax.data.batching (bucketed left/right padding, concatenated preference rows)."""
import functools

import numpy as np
import pytest

from rlhf_jax.data import batching
from rlhf_jax.data import loader

PAD = 0


def _random_ids(rng, length):
  return rng.integers(3, 100, size=length).tolist()


def test_bucket_lengths():
  assert batching.bucket_lengths(512) == (16, 32, 64, 128, 256, 512)
  assert batching.bucket_lengths(200, min_len=20) == (32, 64, 128, 200)
  assert batching.bucket_lengths(256, multiple=64) == (64, 128, 192, 256)
  assert batching.bucket_lengths(200, multiple=64) == (64, 128, 192, 200)
  assert batching.bucket_lengths(8, min_len=16) == (8,)
  with pytest.raises(ValueError, match="max_len must be >= 1"):
    batching.bucket_lengths(0)


def test_pick_bucket():
  buckets = (16, 32, 64)
  assert [batching.pick_bucket(n, buckets) for n in (1, 16, 17, 64)] == [16, 16, 32, 64]
  with pytest.raises(ValueError, match="length 65 exceeds the largest bucket 64"):
    batching.pick_bucket(65, buckets)


def test_positions_from_mask_matches_a_loop():
  rng = np.random.default_rng(0)
  mask = (rng.random((5, 9)) < 0.6).astype(np.int32)
  mask[:, :2] = [[0, 0], [1, 1], [0, 1], [1, 0], [0, 0]]
  want = np.zeros_like(mask)
  for b in range(mask.shape[0]):
    seen = 0
    for t in range(mask.shape[1]):
      if mask[b, t]:
        want[b, t] = seen
        seen += 1
  got = batching.positions_from_mask(mask)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.int32


def test_pad_prompts_left_pads_into_the_smallest_fitting_bucket():
  rng = np.random.default_rng(1)
  prompts = [_random_ids(rng, n) for n in (5, 1, 9)]
  batch = batching.pad_prompts(prompts, buckets=(4, 8, 16), pad_id=PAD)
  assert batch.tokens_BxP.shape == (3, 16)
  for b, prompt in enumerate(prompts):
    n = len(prompt)
    assert batch.tokens_BxP[b, 16 - n:].tolist() == prompt
    assert batch.tokens_BxP[b, :16 - n].tolist() == [PAD] * (16 - n)
    assert batch.mask_BxP[b].tolist() == [0] * (16 - n) + [1] * n
    assert batch.positions_BxP[b].tolist() == [0] * (16 - n) + list(range(n))
  assert all(x.dtype == np.int32 for x in batch)
  assert batching.pad_prompts([[1, 2]], buckets=(4, 8), pad_id=PAD).tokens_BxP.shape == (1, 4)


def test_pad_prompts_over_long_error_names_example_and_length():
  with pytest.raises(ValueError, match=r"example 'q7': prompt = 9 tokens exceeds the largest "
                                       r"bucket 8"):
    batching.pad_prompts([[1], [2] * 9], buckets=(4, 8), pad_id=PAD, example_ids=["q1", "q7"])


def test_pad_sequences_right_pads_with_masks_and_last_index():
  tokens = [[5, 6, 7], [8, 9, 10, 11, 12]]
  masks = [[0, 1, 1], [0, 0, 1, 1, 1]]
  batch = batching.pad_sequences(tokens, masks, buckets=(4, 8), pad_id=PAD)
  np.testing.assert_array_equal(batch.tokens_BxL, [[5, 6, 7, 0, 0, 0, 0, 0],
                                                   [8, 9, 10, 11, 12, 0, 0, 0]])
  np.testing.assert_array_equal(batch.positions_BxL, [[0, 1, 2, 0, 0, 0, 0, 0],
                                                      [0, 1, 2, 3, 4, 0, 0, 0]])
  np.testing.assert_array_equal(batch.segment_ids_BxL, [[1, 1, 1, 0, 0, 0, 0, 0],
                                                        [1, 1, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch.loss_mask_BxL, [[0, 1, 1, 0, 0, 0, 0, 0],
                                                      [0, 0, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(batch.last_index_B, [2, 4])
  with pytest.raises(ValueError, match="example 's1': 2 tokens but 3 loss-mask entries"):
    batching.pad_sequences([[1], [1, 2]], [[1], [1, 1, 1]], buckets=(4,), pad_id=PAD,
                           example_ids=["s0", "s1"])
  with pytest.raises(ValueError, match="only 0 and 1"):
    batching.pad_sequences([[1, 2]], [[1, 2]], buckets=(4,), pad_id=PAD)
  with pytest.raises(ValueError, match="example '#0' has no tokens"):
    batching.pad_sequences([[]], [[]], buckets=(4,), pad_id=PAD)


def _naive_preference_rows(prompts, chosen, rejected, length):
  """Independent reference: build each row as Python lists."""
  rows = []
  for responses in (chosen, rejected):
    for prompt, response in zip(prompts, responses):
      real = list(prompt) + list(response)
      pad = length - len(real)
      rows.append(dict(tokens=real + [PAD] * pad,
                       positions=list(range(len(real))) + [0] * pad,
                       segments=[1] * len(real) + [0] * pad,
                       loss=[0] * len(prompt) + [1] * len(response) + [0] * pad,
                       last=len(real) - 1))
  return rows


def test_preference_rows_match_a_naive_reference():
  rng = np.random.default_rng(2)
  prompts = [_random_ids(rng, n) for n in (3, 7, 1, 4)]
  chosen = [_random_ids(rng, n) for n in (2, 5, 0, 9)]   # one empty chosen response
  rejected = [_random_ids(rng, n) for n in (6, 1, 4, 3)]
  batch = batching.pad_preference_pairs(prompts, chosen, rejected, buckets=(8, 16, 32),
                                        pad_id=PAD)
  assert batch.tokens_BxL.shape == (8, 16)  # longest row is 4 + 9 = 13
  for r, want in enumerate(_naive_preference_rows(prompts, chosen, rejected, 16)):
    assert batch.tokens_BxL[r].tolist() == want["tokens"], r
    assert batch.positions_BxL[r].tolist() == want["positions"], r
    assert batch.segment_ids_BxL[r].tolist() == want["segments"], r
    assert batch.loss_mask_BxL[r].tolist() == want["loss"], r
    assert batch.last_index_B[r] == want["last"], r
  assert batch.loss_mask_BxL[2].sum() == 0  # empty chosen response: nothing to score but a row


def test_preference_over_long_error_names_example_and_parts():
  with pytest.raises(ValueError, match=r"example 'p1': prompt 3 \+ rejected 6 = 9 tokens "
                                       r"exceeds the largest bucket 8"):
    batching.pad_preference_pairs([[1], [1, 2, 3]], [[4], [4]], [[5], [5] * 6], buckets=(4, 8),
                                  pad_id=PAD, example_ids=["p0", "p1"])
  with pytest.raises(ValueError, match="got 1 rejected responses for 2 rows"):
    batching.pad_preference_pairs([[1], [2]], [[3], [4]], [[5]], buckets=(8,), pad_id=PAD)


def test_collate_functions_read_records():
  records = [{"id": "a", "prompt_ids": np.array([1, 2], np.int32),
              "chosen_ids": np.array([3], np.int32), "rejected_ids": np.array([4, 5], np.int32),
              "weight": 0.5, "confidence": 0.9, "tie": False, "margin": 1.5},
             {"id": "b", "prompt_ids": np.array([6], np.int32),
              "chosen_ids": np.array([7, 8], np.int32), "rejected_ids": np.array([9], np.int32),
              "weight": 2.0, "confidence": 1.0, "tie": True}]
  batch = batching.collate_preferences(records, buckets=(4, 8), pad_id=PAD)
  np.testing.assert_array_equal(batch.rows.tokens_BxL, [[1, 2, 3, 0], [6, 7, 8, 0],
                                                        [1, 2, 4, 5], [6, 9, 0, 0]])
  np.testing.assert_allclose(batch.weight_B, [0.5, 2.0])
  np.testing.assert_allclose(batch.confidence_B, [0.9, 1.0])
  assert batch.tie_B.tolist() == [False, True] and batch.tie_B.dtype == np.bool_
  np.testing.assert_allclose(batch.margin_B, [1.5, 0.0])  # missing margin -> 0
  assert batch.margin_B.dtype == np.float32
  nones = [{**records[0], "weight": None, "confidence": None, "margin": None}]
  batch = batching.collate_preferences(nones, buckets=(8,), pad_id=PAD)
  assert (batch.weight_B.tolist(), batch.confidence_B.tolist(), batch.margin_B.tolist()) == (
      [1.0], [1.0], [0.0])

  prompts = batching.collate_prompts(records, buckets=(4,), pad_id=PAD)
  np.testing.assert_array_equal(prompts.tokens_BxP, [[0, 0, 1, 2], [0, 0, 0, 6]])
  sft = batching.collate_sft([{"id": "s", "token_ids": [1, 2], "loss_mask": [0, 1]}],
                             buckets=(4,), pad_id=PAD)
  np.testing.assert_array_equal(sft.loss_mask_BxL, [[0, 1, 0, 0]])
  with pytest.raises(KeyError, match="lack field 'token_ids'.*with token ids"):
    batching.collate_sft([{"id": "s", "prompt": "x"}], buckets=(4,), pad_id=PAD)


def test_loader_batches_only_take_bucket_shapes():
  rng = np.random.default_rng(3)
  short, long = (1, 8), (8, 30)  # the first 20 records fit in 16 tokens, the rest need more
  records = [{"id": f"e{i}", "prompt_ids": _random_ids(rng, rng.integers(1, 8)),
              "chosen_ids": _random_ids(rng, rng.integers(*(short if i < 20 else long))),
              "rejected_ids": _random_ids(rng, rng.integers(*(short if i < 20 else long)))}
             for i in range(40)]
  buckets = batching.bucket_lengths(64, min_len=16)
  data = loader.make_loader(
      records, batch_size=4, seed=0, shuffle=False, num_epochs=1, process_index=0,
      process_count=1,
      batch_fn=functools.partial(batching.collate_preferences, buckets=buckets, pad_id=PAD))
  shapes = [batch.rows.tokens_BxL.shape for batch in data]
  assert set(shapes) <= {(8, length) for length in buckets}
  assert shapes[:5] == [(8, 16)] * 5 and all(s[1] > 16 for s in shapes[5:])
