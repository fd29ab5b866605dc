"""Deterministic, resumable, per-process sharded batches from a random-access source, with grain.

Every process builds the same global order: the record indices 0..n-1, shuffled per epoch from
the seed (grain's index shuffle folds the epoch into a hash of the seed), repeated for
`num_epochs`, and cut into global batches of `batch_size * process_count` indices. Process p
keeps rows `[p * batch_size, (p + 1) * batch_size)` of each global batch and reads only those
records. So each record of an epoch is read by exactly one process, and all processes produce the
same number of batches (no process runs dry while the others wait in a collective).
Batches may straddle epoch boundaries (repeat, then batch); with a finite `num_epochs` and
`drop_remainder=True` only the final incomplete global batch is dropped.

The iterator position is one integer (global batches consumed). `get_state()` returns it as a JSON
string together with the settings that define the order; restoring checks those settings, so a
resumed run sees exactly the same batches. The state does not depend on the process layout: a run
restored with a different process_count but the same global batch continues the same sequence.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import grain
import jax
import numpy as np

Example = Any
Batch = Any


def stack_examples(examples: Sequence[Example]) -> Batch:
  """Default batch function: stacks each field of dict examples (or whole array examples).

  Fields must have equal shapes across the batch; ragged token lists need a padding batch function
  such as those in `rlhf_jax.data.batching`.
  """
  if isinstance(examples[0], Mapping):
    batch = {}
    for key in examples[0]:
      values = [example[key] for example in examples]
      shapes = {np.shape(value) for value in values}
      if len(shapes) > 1:
        raise ValueError(f"field {key!r} has shapes {sorted(shapes)} across the batch; pass a "
                         "batch_fn that pads (see rlhf_jax.data.batching)")
      batch[key] = np.stack([np.asarray(value) for value in values])
    return batch
  return np.stack([np.asarray(example) for example in examples])


def _apply(transform: Any, example: Example) -> Example:
  # grain.transforms.Map objects carry the function as `.map`; plain callables are called.
  return transform.map(example) if hasattr(transform, "map") else transform(example)


class LoaderIterator:
  """Iterator over one process's batches; `get_state()` / `set_state()` make it resumable."""

  def __init__(self, dataset: grain.MapDataset, settings: dict[str, Any], read_threads: int):
    self._settings = settings
    read_options = grain.ReadOptions(num_threads=read_threads,
                                     prefetch_buffer_size=2 * read_threads)
    # Elements that are None (a process's empty share of a final short batch) are skipped.
    self._iterator = iter(dataset.to_iter_dataset(read_options))

  def __iter__(self) -> LoaderIterator:
    return self

  def __next__(self) -> Batch:
    return next(self._iterator)

  def get_state(self) -> str:
    """JSON string: global batches consumed plus the settings that fix the order."""
    state = {"next_index": int(self._iterator.get_state()["next_index"]),
             "settings": self._settings}
    return json.dumps(state, sort_keys=True)

  def set_state(self, state: str | bytes) -> None:
    """Continues from a `get_state()` string; raises if it came from a different pipeline."""
    try:
      decoded = json.loads(state)
      next_index = int(decoded["next_index"])
      saved = decoded["settings"]
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"not a loader state: {state!r:.200}") from e
    differing = {key: (saved.get(key), value) for key, value in self._settings.items()
                 if saved.get(key) != value}
    if differing:
      detail = ", ".join(f"{k}: saved {s!r}, now {n!r}" for k, (s, n) in sorted(differing.items()))
      raise ValueError(f"loader state belongs to a different pipeline ({detail})")
    self._iterator.set_state({"next_index": next_index})


class Loader:
  """Iterable of this process's batches; each `iter(loader)` starts from the beginning."""

  def __init__(self, dataset: grain.MapDataset, settings: dict[str, Any], num_batches: int | None,
               read_threads: int):
    self._dataset = dataset
    self.settings = settings
    self.num_batches = num_batches  # on this process; None when it repeats forever
    self._read_threads = read_threads

  def __iter__(self) -> LoaderIterator:
    return LoaderIterator(self._dataset, self.settings, self._read_threads)

  def __len__(self) -> int:
    if self.num_batches is None:
      raise TypeError("the loader repeats forever (num_epochs=None) and has no length")
    return self.num_batches


def make_loader(source: Any, *, batch_size: int, seed: int, shuffle: bool = True,
                num_epochs: int | None = None, transforms: Sequence[Callable] = (),
                batch_fn: Callable[[list[Example]], Batch] = stack_examples,
                process_index: int | None = None, process_count: int | None = None,
                drop_remainder: bool = True, read_threads: int = 0,
                identity: Mapping[str, Any] | None = None) -> Loader:
  """Builds a deterministic, per-process sharded, resumable batch pipeline.

  Args:
    source: random-access records: `len(source)`, `source[i]`, optionally
      `source.__getitems__(indices)` (e.g. `tfds_builders.open_split(...)`).
    batch_size: rows per batch on this process; the global batch is batch_size * process_count.
    seed: shuffle seed in [0, 2**32); epoch e uses a permutation derived from (seed, e).
    shuffle: shuffle the records every epoch (otherwise source order).
    num_epochs: passes over the data; None repeats forever.
    transforms: per-example callables (or grain.transforms.Map) applied in order after reading.
    batch_fn: turns a list of transformed examples into a batch (default `stack_examples`).
    process_index: this process; defaults to `jax.process_index()` at call time.
    process_count: number of processes; defaults to `jax.process_count()` at call time.
    drop_remainder: drop the final incomplete global batch. If False it is split in order across
      processes, so some processes get a short batch and later ones may get none.
    read_threads: grain read threads (0 reads synchronously in the calling thread).
    identity: extra JSON-serialisable settings a restored state must match (e.g. the dataset id
      and batch shapes), so a state is not silently applied to another dataset of the same size.

  Returns:
    A `Loader`; `iter(loader)` gives a `LoaderIterator` with get_state()/set_state().
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  num_records = len(source)
  if num_records == 0:
    raise ValueError("source is empty")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"need 0 <= process_index < process_count, got {process_index} and "
                     f"{process_count}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
  if not 0 <= seed < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {seed}")
  global_batch = batch_size * process_count
  num_batches = None
  if num_epochs is not None:
    total = num_records * num_epochs
    num_batches = total // global_batch
    remainder = total % global_batch
    if not drop_remainder and remainder > process_index * batch_size:
      num_batches += 1
    if num_batches == 0:
      raise ValueError(f"{num_epochs} epoch(s) of {num_records} records give no batch of "
                       f"{batch_size} for process {process_index} of {process_count}")

  indices = grain.MapDataset.range(num_records)
  if shuffle:
    # grain shuffles epoch e with seed + e, so seeds 3 and 4 would give the same orders one epoch
    # apart; hashing the seed first makes nearby seeds unrelated.
    mixed_seed = int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])
    indices = indices.shuffle(seed=mixed_seed)
  indices = indices.repeat(num_epochs).batch(global_batch, drop_remainder=drop_remainder)
  start, stop = process_index * batch_size, (process_index + 1) * batch_size
  read_many = getattr(source, "__getitems__", None)
  transforms = tuple(transforms)

  def read_batch(global_indices: np.ndarray) -> Batch | None:
    rows = [int(i) for i in global_indices[start:stop]]
    if not rows:
      return None
    examples = list(read_many(rows)) if read_many else [source[i] for i in rows]
    for transform in transforms:
      examples = [_apply(transform, example) for example in examples]
    return batch_fn(examples)

  settings = {"num_records": num_records, "global_batch_size": global_batch, "seed": seed,
              "shuffle": shuffle, "num_epochs": num_epochs, "drop_remainder": drop_remainder}
  clash = sorted(set(identity or {}) & set(settings))
  if clash:
    raise ValueError(f"identity keys {clash} clash with the loader's own settings")
  settings.update(json.loads(json.dumps(identity or {})))  # as a saved state reads it back
  return Loader(indices.map(read_batch), settings, num_batches, read_threads)

