"""TFDS (TensorFlow Datasets) builders that turn local records into array_record datasets.

The builders take already-validated records (plain dicts of str / int / float / bool / list[int]),
write them as `array_record` files through `tfds.core.GeneratorBasedBuilder` and never import
TensorFlow: reading goes through `tfds.builder_from_directory(...).as_data_source(...)`, never
`tfds.load` or `as_dataset` (both need TensorFlow and refuse array_record anyway).

Three kinds of dataset, each with a fixed feature spec (see `FIELDS`):

  preference  prompt / chosen / rejected text, optional token ids, annotator id, weight (loss
              weight given in the data), confidence (label probability, e.g. a Dawid-Skene
              posterior), margin (preference strength for margin losses), tie flag, source,
              example id
  sft         prompt / response text, optional token ids with a per-token loss mask, source,
              example id (SFT = supervised fine-tuning)
  prompt      prompt text, optional token ids, optional reference answer, source, example id

Guarantees:
  * Record order is kept: examples get integer keys and `DatasetInfo(disable_shuffling=True)`
    (a class attribute `disable_shuffling` is ignored by TFDS 4.9).
  * Rebuilding the same records gives byte-identical files, also across processes (TFDS serialises
    the tf.Example feature map in hash order; we ask protobuf for its deterministic map order).
  * Optional fields that are missing or None get their default ("" for text, 1.0 for weight and
    confidence, 0.0 for margin, False for tie), so `schemas` `to_dict()` output maps over field
    by field.
  * A dataset can be opened in a fresh process: the builder classes are never registered and
    `open_split` reads only the files (features.json, dataset_info.json, shards).
"""
from __future__ import annotations

import contextlib
import dataclasses
import numbers
import pathlib
import re
import shutil
import tempfile
import types
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

Kind = Literal["preference", "sft", "prompt"]
Record = Mapping[str, Any]

_INT32 = np.iinfo(np.int32)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Field:
  """One feature of a dataset kind.

  Attributes:
    dtype: "text" (str), "ids" (1-D int32 sequence), "float" (float32 scalar) or "bool".
    required: whether every record must carry the field.
    default: value stored when an optional scalar field is missing. Optional "ids" fields have no
      default: they form the kind's token-id group, stored for all records or for none.
  """
  dtype: Literal["text", "ids", "float", "bool"]
  required: bool = False
  default: Any = None


FIELDS: dict[str, dict[str, Field]] = {
    "preference": {
        "id": Field("text", required=True),
        "prompt": Field("text", required=True),
        "chosen": Field("text", required=True),
        "rejected": Field("text", required=True),
        "prompt_ids": Field("ids"),
        "chosen_ids": Field("ids"),
        "rejected_ids": Field("ids"),
        "annotator_id": Field("text", default=""),
        "weight": Field("float", default=1.0),
        "confidence": Field("float", default=1.0),
        "margin": Field("float", default=0.0),  # preference strength; 0 means no margin
        "tie": Field("bool", default=False),
        "source": Field("text", default=""),
    },
    "sft": {
        "id": Field("text", required=True),
        "prompt": Field("text", required=True),
        "response": Field("text", required=True),
        "token_ids": Field("ids"),
        "loss_mask": Field("ids"),  # 0/1 per token, same length as token_ids
        "source": Field("text", default=""),
    },
    "prompt": {
        "id": Field("text", required=True),
        "prompt": Field("text", required=True),
        "prompt_ids": Field("ids"),
        "reference": Field("text", default=""),  # e.g. a verifiable answer; "" when absent
        "source": Field("text", default=""),
    },
}
# Fields whose values are 0/1 and whose length must match another ids field.
_MASKS: dict[str, dict[str, str]] = {"sft": {"loss_mask": "token_ids"}}


def _id_fields(kind: str) -> tuple[str, ...]:
  return tuple(k for k, f in FIELDS[kind].items() if f.dtype == "ids")


def _check_kind(kind: str) -> None:
  if kind not in FIELDS:
    raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(FIELDS)}")


def feature_spec(kind: Kind, *, with_token_ids: bool) -> tfds.features.FeaturesDict:
  """The TFDS features of a dataset kind, with or without its token-id fields."""
  _check_kind(kind)
  tfds_feature = {
      "text": tfds.features.Text,
      "ids": lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "float": lambda: tfds.features.Scalar(dtype=np.float32),
      "bool": lambda: tfds.features.Scalar(dtype=np.bool_),
  }
  return tfds.features.FeaturesDict({
      name: tfds_feature[field.dtype]() for name, field in FIELDS[kind].items()
      if with_token_ids or field.dtype != "ids"
  })


def _given(record: Record, name: str) -> bool:
  """An optional field counts as absent when missing or None (as in schemas' to_dict())."""
  return record.get(name) is not None


def _where(kind: str, split: str, index: int, record: Record) -> str:
  return f"{kind} split {split!r} record {index} (id={record.get('id')!r})"


def _convert_value(value: Any, field: Field, where: str, name: str) -> Any:
  """Checks one value against its field and converts it to what TFDS stores."""
  if field.dtype == "text":
    if not isinstance(value, str):
      raise TypeError(f"{where}: field {name!r} must be str, got {type(value).__name__}")
    return value
  if field.dtype == "float":
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
      raise TypeError(f"{where}: field {name!r} must be a number, got {type(value).__name__}")
    if not np.isfinite(value):
      raise ValueError(f"{where}: field {name!r} must be finite, got {value}")
    return np.float32(value)
  if field.dtype == "bool":
    if not isinstance(value, (bool, np.bool_)):
      raise TypeError(f"{where}: field {name!r} must be bool, got {type(value).__name__}")
    return bool(value)
  # "ids": a 1-D sequence of integers inside int32.
  if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
    raise TypeError(f"{where}: field {name!r} must be a list of ints, got {type(value).__name__}")
  array = np.asarray(value)
  if array.size == 0:
    return np.zeros((0,), np.int32)
  if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
    raise TypeError(f"{where}: field {name!r} must be a flat list of ints, got dtype "
                    f"{array.dtype} and shape {array.shape}")
  if array.min() < _INT32.min or array.max() > _INT32.max:
    raise ValueError(f"{where}: field {name!r} has values outside int32")
  return array.astype(np.int32)


def _convert_record(kind: str, split: str, index: int, record: Record,
                    with_token_ids: bool) -> dict[str, Any]:
  """Validates a record and fills defaults; the result matches `feature_spec(kind, ...)`."""
  where = _where(kind, split, index, record)
  fields = FIELDS[kind]
  unknown = sorted(set(record) - set(fields))
  if unknown:
    raise ValueError(f"{where}: unknown field(s) {unknown}; {kind} records take {sorted(fields)}")
  example = {}
  for name, field in fields.items():
    if field.dtype == "ids" and not with_token_ids:
      if _given(record, name):
        raise ValueError(f"{where}: field {name!r} is given but the dataset is built without "
                         "token ids")
      continue
    if field.required and name not in record:
      raise ValueError(f"{where}: missing field {name!r}")
    if not field.required and not _given(record, name):
      if field.dtype == "ids":
        raise ValueError(f"{where}: missing field {name!r}")
      example[name] = _convert_value(field.default, field, where, name)
    else:
      example[name] = _convert_value(record[name], field, where, name)
  for mask_name, ids_name in _MASKS.get(kind, {}).items():
    if mask_name in example:
      mask, ids = example[mask_name], example[ids_name]
      if mask.shape != ids.shape:
        raise ValueError(f"{where}: {mask_name!r} has length {mask.shape[0]} but {ids_name!r} "
                         f"has length {ids.shape[0]}")
      if np.any((mask != 0) & (mask != 1)):
        raise ValueError(f"{where}: {mask_name!r} must hold only 0 and 1")
  return example


def _infer_with_token_ids(kind: str, records_by_split: Mapping[str, Sequence[Record]]) -> bool:
  """True when every record carries all token-id fields, False when none carries any."""
  id_fields = _id_fields(kind)
  seen_with = seen_without = None
  for split, records in records_by_split.items():
    for index, record in enumerate(records):
      present = [name for name in id_fields if _given(record, name)]
      if present and len(present) < len(id_fields):
        missing = sorted(set(id_fields) - set(present))
        raise ValueError(f"{_where(kind, split, index, record)}: has {present} but lacks "
                         f"{missing}; token-id fields {list(id_fields)} go together")
      if present:
        seen_with = seen_with or (split, index, record)
      else:
        seen_without = seen_without or (split, index, record)
      if seen_with and seen_without:
        with_where = _where(kind, *seen_with)
        without_where = _where(kind, *seen_without)
        raise ValueError(f"token-id fields {list(id_fields)} must be given for all records or "
                         f"none: {with_where} has them, {without_where} does not")
  return seen_with is not None


class _RecordsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes in-memory records of one kind; subclasses set KIND (and build_dataset sets name)."""
  VERSION = tfds.core.Version("1.0.0")
  KIND: str

  def __init__(self, *, records_by_split: Mapping[str, Sequence[Record]] | None = None,
               with_token_ids: bool = False, **kwargs):
    self._records_by_split = records_by_split
    self._with_token_ids = with_token_ids
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # Local records need no download checksums, which is all TFDS uses this path for; its default
    # lookup needs the uninstalled `importlib_resources` for builders that live in a package.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    # disable_shuffling must go to DatasetInfo: TFDS 4.9 ignores the class attribute.
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"rlhf_jax {self.KIND} dataset",
        features=feature_spec(self.KIND, with_token_ids=self._with_token_ids),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    if self._records_by_split is None:
      raise ValueError(f"{type(self).__name__} was created without records; use build_dataset")
    return {split: self._generate_examples(split, records)
            for split, records in self._records_by_split.items()}

  def _generate_examples(self, split: str, records: Sequence[Record]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, record in enumerate(records):
      yield index, _convert_record(self.KIND, split, index, record, self._with_token_ids)


class PreferenceDataset(_RecordsBuilder, skip_registration=True):
  """Preference pairs (prompt, chosen, rejected) with annotation metadata."""
  KIND = "preference"


class SFTDataset(_RecordsBuilder, skip_registration=True):
  """SFT (supervised fine-tuning) demonstrations with an optional per-token loss mask."""
  KIND = "sft"


class PromptDataset(_RecordsBuilder, skip_registration=True):
  """Prompts for generation (RL rollouts, best-of-N, evaluation)."""
  KIND = "prompt"


BUILDERS: dict[str, type[_RecordsBuilder]] = {
    "preference": PreferenceDataset, "sft": SFTDataset, "prompt": PromptDataset}


@contextlib.contextmanager
def _deterministic_serialization() -> Iterator[None]:
  """Serialises tf.Example protos with a deterministic feature-map order while building.

  TFDS calls `SerializeToString()` on a proto whose feature map is written in hash-table order,
  which changes from process to process; the records themselves are unchanged.
  """
  serializer_cls = example_serializer.ExampleSerializer
  original = serializer_cls.serialize_example

  def serialize_example(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)

  serializer_cls.serialize_example = serialize_example
  try:
    yield
  finally:
    serializer_cls.serialize_example = original


def build_dataset(kind: Kind, records_by_split: Mapping[str, Sequence[Record]],
                  data_dir: str | pathlib.Path, name: str, version: str = "1.0.0", *,
                  with_token_ids: bool | None = None, overwrite: bool = False) -> str:
  """Writes records as an array_record TFDS dataset and returns its directory.

  Args:
    kind: "preference", "sft" or "prompt" (see `FIELDS` for each kind's fields).
    records_by_split: split name -> records (dicts); order is kept and keys are 0, 1, 2, ...
    data_dir: root directory; the dataset goes to `data_dir/name/version`.
    name: dataset name (lower snake case).
    version: "MAJOR.MINOR.PATCH".
    with_token_ids: store the kind's token-id fields; None infers it from the records (all records
      carry them, or none does).
    overwrite: replace an existing dataset at the same path (otherwise FileExistsError).

  Returns:
    The dataset directory `data_dir/name/version`, to pass to `open_split`.

  Example:
    path = build_dataset("prompt", {"train": [{"id": "a", "prompt": "Hi"}]}, tmp, "prompts")
    open_split(path, "train")[0]["prompt"] == "Hi"
  """
  _check_kind(kind)
  if not _NAME_RE.match(name):
    raise ValueError(f"dataset name {name!r} must be lower snake case (e.g. 'hh_rlhf_pairs')")
  if not records_by_split:
    raise ValueError("records_by_split is empty: give at least one split")
  for split, records in records_by_split.items():
    if len(records) == 0:
      raise ValueError(f"{kind} split {split!r} has no records")
  for split, records in records_by_split.items():
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
      if not isinstance(record, Mapping):
        raise TypeError(f"{kind} split {split!r} record {index}: expected a dict, "
                        f"got {type(record).__name__}")
      example_id = record.get("id")
      if example_id is not None and example_id in seen:
        raise ValueError(f"{kind} split {split!r}: id {example_id!r} appears at records "
                         f"{seen[example_id]} and {index}")
      seen[example_id] = index
  if with_token_ids is None:
    with_token_ids = _infer_with_token_ids(kind, records_by_split)
  version_dir = pathlib.Path(data_dir) / name / str(tfds.core.Version(version))
  if version_dir.exists():
    if not overwrite:
      raise FileExistsError(f"dataset already exists at {version_dir}; pass overwrite=True")
    shutil.rmtree(version_dir)

  builder_cls = types.new_class(
      f"{BUILDERS[kind].__name__}_{name}", (BUILDERS[kind],), {"skip_registration": True},
      lambda ns: ns.update(name=name, VERSION=tfds.core.Version(version), __module__=__name__))
  # Validate everything before TFDS starts writing, so bad input leaves no partial dataset behind.
  examples_by_split = {
      split: [_convert_record(kind, split, index, record, with_token_ids)
              for index, record in enumerate(records)]
      for split, records in records_by_split.items()}
  builder = builder_cls(records_by_split=examples_by_split, with_token_ids=with_token_ids,
                        data_dir=str(data_dir), file_format="array_record")
  # Nothing is downloaded; a throw-away download_dir keeps empty "downloads/" out of data_dir.
  with tempfile.TemporaryDirectory() as download_dir, _deterministic_serialization():
    builder.download_and_prepare(download_dir=download_dir)
  return str(builder.data_dir)


class RecordSource:
  """Random-access records of one split, with Text features decoded from bytes to str.

  Supports `len(source)`, `source[i]` and `source.__getitems__([i, j, ...])` (what grain reads).
  Token ids come back as int32 arrays, floats as float32, bools as numpy bools.
  """

  def __init__(self, source, text_fields: Sequence[str], path: str, split: str):
    self._source = source
    self._text_fields = tuple(text_fields)
    self.path = path
    self.split = split

  def __len__(self) -> int:
    return len(self._source)

  def _index(self, index: int) -> int:
    n = len(self._source)
    i = int(index)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"index {index} out of range for split {self.split!r} of {self.path} "
                       f"({n} records)")
    return i

  def _decode(self, example: dict[str, Any]) -> dict[str, Any]:
    for field in self._text_fields:
      example[field] = example[field].decode("utf-8")
    return example

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._decode(self._source[self._index(index)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    examples = self._source.__getitems__([self._index(i) for i in indices])
    return [self._decode(example) for example in examples]

  def __repr__(self) -> str:
    return f"RecordSource(path={self.path!r}, split={self.split!r}, len={len(self)})"


def open_split(path: str | pathlib.Path, split: str) -> RecordSource:
  """Opens one split (TFDS slicing like "train[:10%]" allowed) of a dataset built here.

  Works in a process where no builder class is registered: only the files are read.
  """
  path = pathlib.Path(path)
  if not (path / "dataset_info.json").is_file():
    raise FileNotFoundError(f"no TFDS dataset at {path} (dataset_info.json missing)")
  builder = tfds.builder_from_directory(str(path))
  base_split = re.split(r"[\[+]", split, maxsplit=1)[0]
  if base_split not in builder.info.splits:
    raise KeyError(f"split {base_split!r} not in {path}; available: {sorted(builder.info.splits)}")
  text_fields = [name for name, feature in builder.info.features.items()
                 if isinstance(feature, tfds.features.Text)]
  return RecordSource(builder.as_data_source(split=split), text_fields, str(path), split)
