"""Tests for rlhf_jax.data.loader (deterministic, sharded, resumable grain pipelines)."""
import functools
import itertools
import json

import grain
import numpy as np
import pytest

from rlhf_jax.data import loader
from rlhf_jax.data import tfds_builders

N = 24


def _source(n=N):
  return [{"index": np.int32(i), "ids": np.arange(3, dtype=np.int32) + i} for i in range(n)]


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def _indices(batches):
  return [b["index"].tolist() for b in batches]


def test_resume_from_saved_state_gives_identical_batches():
  make = functools.partial(loader.make_loader, _source(), batch_size=5, seed=7,
                           process_index=0, process_count=1)
  it = iter(make())
  _take(it, 3)
  state = it.get_state()
  assert isinstance(state, str) and json.loads(state)["next_index"] == 3
  later = _indices(_take(it, 8))  # crosses epoch boundaries (24 records, 5 per batch)
  resumed = iter(make())
  resumed.set_state(state.encode())  # bytes work too
  assert _indices(_take(resumed, 8)) == later
  fresh = iter(make())
  assert _indices(_take(fresh, 3)) != later[:3]  # a restored iterator is not just a restart


def test_two_processes_see_disjoint_records_covering_each_epoch():
  per_process = []
  for process_index in range(2):
    data = loader.make_loader(_source(), batch_size=3, seed=1, num_epochs=2,
                              process_index=process_index, process_count=2)
    batches = list(data)
    assert len(batches) == len(data) == 2 * N // 6
    per_process.append(batches)
  for epoch in range(2):
    seen = [set(np.concatenate(_indices(p[4 * epoch:4 * epoch + 4]))) for p in per_process]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(N))
    assert len(seen[0]) == len(seen[1]) == N // 2


def test_each_epoch_is_a_fresh_permutation_from_the_seed():
  def epochs(seed, shuffle=True):
    it = iter(loader.make_loader(_source(), batch_size=4, seed=seed, shuffle=shuffle,
                                 process_index=0, process_count=1))
    order = np.concatenate(_indices(_take(it, 3 * N // 4)))
    return order.reshape(3, N)

  first = epochs(seed=3)
  for epoch in first:
    assert sorted(epoch) == list(range(N))
  assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
  np.testing.assert_array_equal(epochs(seed=3), first)
  second = epochs(seed=4)
  assert not np.array_equal(second[0], first[0])
  assert not np.array_equal(second[0], first[1])  # nearby seeds are not shifted epochs
  np.testing.assert_array_equal(epochs(seed=3, shuffle=False), np.tile(np.arange(N), (3, 1)))


def test_state_is_independent_of_the_process_layout():
  """2 processes x 2 rows read the same global batches as 1 process x 4 rows, and states move."""
  single = loader.make_loader(_source(), batch_size=4, seed=5, process_index=0, process_count=1)
  pair = [loader.make_loader(_source(), batch_size=2, seed=5, process_index=p, process_count=2)
          for p in range(2)]
  single_it, pair_its = iter(single), [iter(p) for p in pair]
  for _ in range(7):
    want = next(single_it)["index"]
    got = np.concatenate([next(it)["index"] for it in pair_its])
    np.testing.assert_array_equal(got, want)
  resumed = iter(single)
  resumed.set_state(pair_its[1].get_state())
  np.testing.assert_array_equal(
      next(resumed)["index"], np.concatenate([next(it)["index"] for it in pair_its]))


@pytest.mark.parametrize("kwargs, field", [(dict(seed=8), "seed"),
                                           (dict(batch_size=3), "global_batch_size"),
                                           (dict(shuffle=False), "shuffle"),
                                           (dict(num_epochs=2), "num_epochs")])
def test_restoring_into_a_different_pipeline_is_refused(kwargs, field):
  args = dict(batch_size=4, seed=7, process_index=0, process_count=1)
  it = iter(loader.make_loader(_source(), **args))
  next(it)
  other = iter(loader.make_loader(_source(), **{**args, **kwargs}))
  with pytest.raises(ValueError, match=f"different pipeline.*{field}"):
    other.set_state(it.get_state())
  with pytest.raises(ValueError, match="not a loader state"):
    other.set_state("{}")


def test_identity_settings_must_match_on_restore():
  args = dict(batch_size=4, seed=7, process_index=0, process_count=1)
  it = iter(loader.make_loader(_source(), identity={"dataset_id": "a@1", "buckets": (8, 16)},
                               **args))
  next(it)
  state = it.get_state()
  same = iter(loader.make_loader(_source(), identity={"dataset_id": "a@1", "buckets": (8, 16)},
                                 **args))
  same.set_state(state)  # tuples are compared as the JSON lists a saved state holds
  assert _indices([next(same)]) == _indices([next(it)])
  other = iter(loader.make_loader(_source(), identity={"dataset_id": "b@2", "buckets": (8, 16)},
                                  **args))
  with pytest.raises(ValueError, match="different pipeline.*dataset_id: saved 'a@1', now 'b@2'"):
    other.set_state(state)
  with pytest.raises(ValueError, match=r"identity keys \['seed'\] clash"):
    loader.make_loader(_source(), identity={"seed": 1}, **args)


def test_without_drop_remainder_the_last_global_batch_is_split_in_order():
  sizes = []
  for process_index in range(3):
    data = loader.make_loader(_source(10), batch_size=2, seed=0, num_epochs=1,
                              drop_remainder=False, process_index=process_index, process_count=3)
    batches = list(data)
    assert len(batches) == len(data)
    sizes.append([len(b["index"]) for b in batches])
  assert sizes == [[2, 2], [2, 2], [2]]  # 10 = 6 + 4: the short global batch feeds processes 0, 1
  dropped = loader.make_loader(_source(10), batch_size=2, seed=0, num_epochs=1,
                               process_index=2, process_count=3)
  assert len(list(dropped)) == len(dropped) == 1


def test_transforms_and_batch_fn_are_applied_on_this_process_rows():
  class AddOne(grain.transforms.Map):
    def map(self, element):
      return {**element, "ids": element["ids"] + 1}

  data = loader.make_loader(
      _source(), batch_size=4, seed=0, shuffle=False, num_epochs=1, process_index=1,
      process_count=2, transforms=[AddOne(), lambda e: {**e, "double": 2 * e["index"]}],
      batch_fn=lambda examples: {"index": np.asarray([e["index"] for e in examples]),
                                 "first_id": np.asarray([e["ids"][0] for e in examples]),
                                 "double": np.asarray([e["double"] for e in examples])})
  batch = next(iter(data))
  np.testing.assert_array_equal(batch["index"], [4, 5, 6, 7])
  np.testing.assert_array_equal(batch["first_id"], [5, 6, 7, 8])
  np.testing.assert_array_equal(batch["double"], [8, 10, 12, 14])


def test_prefetch_threads_do_not_change_batches():
  make = functools.partial(loader.make_loader, _source(), batch_size=4, seed=2, num_epochs=2,
                           process_index=0, process_count=1)
  assert _indices(make(read_threads=2)) == _indices(make(read_threads=0))


def test_reads_a_tfds_split_through_getitems(tmp_path):
  records = [{"id": f"q{i}", "prompt": f"p{i}", "prompt_ids": [i] * (1 + i % 3)}
             for i in range(12)]
  path = tfds_builders.build_dataset("prompt", {"train": records}, tmp_path, "prompts")
  source = tfds_builders.open_split(path, "train")
  data = loader.make_loader(source, batch_size=3, seed=0, num_epochs=1, process_index=0,
                            process_count=1,
                            batch_fn=lambda examples: [e["id"] for e in examples])
  ids = list(itertools.chain.from_iterable(data))
  assert sorted(ids) == sorted(r["id"] for r in records)


def test_stack_examples():
  batch = loader.stack_examples([{"a": np.int32(1), "b": "x"}, {"a": np.int32(2), "b": "y"}])
  np.testing.assert_array_equal(batch["a"], [1, 2])
  assert batch["b"].tolist() == ["x", "y"]
  with pytest.raises(ValueError, match=r"field 'ids' has shapes \[\(2,\), \(3,\)\].*batch_fn"):
    loader.stack_examples([{"ids": np.zeros(2)}, {"ids": np.zeros(3)}])


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(process_index=2, process_count=2), "process_index < process_count"),
    (dict(num_epochs=0), "num_epochs must be >= 1"),
    (dict(seed=-1), "seed must be in"),
    (dict(batch_size=30, num_epochs=1), "give no batch of 30"),
])
def test_bad_arguments(kwargs, message):
  args = dict(batch_size=4, seed=0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match=message):
    loader.make_loader(_source(), **{**args, **kwargs})
  with pytest.raises(ValueError, match="source is empty"):
    loader.make_loader([], **args)


def test_infinite_loader_has_no_length_but_defaults_to_this_jax_process():
  data = loader.make_loader(_source(), batch_size=4, seed=0)
  assert data.num_batches is None
  with pytest.raises(TypeError, match="repeats forever"):
    len(data)
  assert len(next(iter(data))["index"]) == 4
