"""Tests for rlhf_jax.data.tfds_builders (array_record datasets written and read without TF)."""
import filecmp
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rlhf_jax.data import tfds_builders

REPO = pathlib.Path(__file__).resolve().parent.parent


def _preference_records(n, with_ids=True, offset=0):
  records = []
  for i in range(offset, offset + n):
    record = {"id": f"pair-{i}", "prompt": f"Question {i}: caf\u00e9 \u201cquoted\u201d?",
              "chosen": f"good answer {i}", "rejected": "" if i % 3 == 0 else f"bad {i}"}
    if with_ids:
      record.update(prompt_ids=list(range(i % 4)), chosen_ids=[7, i], rejected_ids=[9] * (i % 3))
    if i % 2:  # metadata on some records only: the rest get the defaults
      record.update(annotator_id=f"rater{i}", weight=0.5 * i, confidence=0.75, tie=True,
                    margin=0.25 * i, source="synthetic")
    records.append(record)
  return records


def _sft_records(n):
  return [{"id": f"sft-{i}", "prompt": f"p{i}", "response": f"r{i}",
           "token_ids": list(range(1, i + 3)), "loss_mask": [0] + [1] * (i + 1)} for i in range(n)]


def _prompt_records(n):
  return [{"id": f"q{i}", "prompt": f"What is {i} + 1?", "prompt_ids": [5, i],
           "reference": str(i + 1)} for i in range(n)]


def _expected(kind, record, with_token_ids=True):
  """What a record should read back as: all fields, defaults filled in."""
  out = {}
  for name, field in tfds_builders.FIELDS[kind].items():
    if field.dtype == "ids" and not with_token_ids:
      continue
    out[name] = record.get(name, field.default)
  return out


def _assert_same(kind, got, want):
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    dtype = tfds_builders.FIELDS[kind][name].dtype
    if dtype == "text":
      assert isinstance(got[name], str) and got[name] == value, name
    elif dtype == "ids":
      assert got[name].dtype == np.int32, name
      np.testing.assert_array_equal(got[name], np.asarray(value, np.int32).reshape(-1))
    elif dtype == "float":
      assert got[name] == pytest.approx(value), name
    else:
      assert bool(got[name]) is value, name


@pytest.mark.parametrize("kind, make", [("preference", _preference_records),
                                        ("sft", _sft_records), ("prompt", _prompt_records)])
def test_round_trip_keeps_order_values_and_defaults(tmp_path, kind, make):
  records = {"train": make(7), "test": make(2)}
  path = tfds_builders.build_dataset(kind, records, tmp_path, f"my_{kind}", "1.2.0")
  assert path == str(tmp_path / f"my_{kind}" / "1.2.0")
  for split, split_records in records.items():
    source = tfds_builders.open_split(path, split)
    assert len(source) == len(split_records)
    for i, record in enumerate(split_records):  # order kept: record i is example i
      _assert_same(kind, source[i], _expected(kind, record))
  train = tfds_builders.open_split(path, "train")
  got = train.__getitems__([4, 0, -1])
  assert [g["id"] for g in got] == [records["train"][i]["id"] for i in (4, 0, 6)]
  with pytest.raises(IndexError, match="out of range"):
    train[7]
  sliced = tfds_builders.open_split(path, "train[2:4]")
  assert [sliced[i]["id"] for i in range(len(sliced))] == [
      records["train"][2]["id"], records["train"][3]["id"]]


def test_token_ids_inferred_absent_when_no_record_has_them(tmp_path):
  records = {"train": _preference_records(3, with_ids=False)}
  path = tfds_builders.build_dataset("preference", records, tmp_path, "text_only")
  example = tfds_builders.open_split(path, "train")[1]
  assert "chosen_ids" not in example and "prompt_ids" not in example
  _assert_same("preference", example, _expected("preference", records["train"][1], False))


def test_none_means_default_for_optional_fields(tmp_path):
  record = {"id": "p", "prompt": "q", "chosen": "a", "rejected": "b", "annotator_id": None,
            "confidence": None, "source": None, "tie": None, "weight": None, "margin": None,
            "prompt_ids": None, "chosen_ids": None, "rejected_ids": None}
  path = tfds_builders.build_dataset("preference", {"train": [record]}, tmp_path, "nones")
  got = tfds_builders.open_split(path, "train")[0]
  assert "prompt_ids" not in got
  _assert_same("preference", got, _expected("preference", {"id": "p", "prompt": "q",
                                                           "chosen": "a", "rejected": "b"}, False))
  with pytest.raises(TypeError, match="'chosen' must be str, got NoneType"):
    tfds_builders.build_dataset("preference", {"train": [{**record, "chosen": None}]}, tmp_path,
                                "none_chosen")
  with pytest.raises(TypeError, match="record 1: expected a dict, got list"):
    tfds_builders.build_dataset("preference", {"train": [record, ["x"]]}, tmp_path, "not_dict")


def test_rebuild_in_fresh_process_is_byte_identical_and_readable(tmp_path):
  """A second process (no builder registered) rebuilds byte-identical files and reads ours.

  The rebuild must happen in another process: TFDS writes each tf.Example feature map in a
  hash-table order that only changes between processes.
  """
  records = {"train": _preference_records(6), "validation": _preference_records(3, offset=6)}
  records_file = tmp_path / "records.json"
  records_file.write_text(json.dumps(records))
  path = tfds_builders.build_dataset("preference", records, tmp_path / "a", "pairs", "1.0.0")
  script = textwrap.dedent(f"""
      import json, sys
      import tensorflow_datasets as tfds
      raw = tfds.builder_from_directory({path!r}).as_data_source(split="train")[0]
      assert isinstance(raw["prompt"], bytes)
      from tensorflow_datasets.core import registered
      assert "pairs" not in registered.list_imported_builders()
      from rlhf_jax.data import tfds_builders
      src = tfds_builders.open_split({path!r}, "validation")
      print(json.dumps([src[i]["id"] for i in range(len(src))]))
      assert "pairs" not in registered.list_imported_builders()
      records = json.load(open({str(records_file)!r}))
      tfds_builders.build_dataset("preference", records, {str(tmp_path / "b")!r}, "pairs", "1.0.0")
  """)
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  ids_line = next(line for line in result.stdout.splitlines() if line.startswith("["))
  assert json.loads(ids_line) == ["pair-6", "pair-7", "pair-8"]
  dir_a, dir_b = pathlib.Path(path), tmp_path / "b" / "pairs" / "1.0.0"
  names = sorted(p.name for p in dir_a.iterdir())
  assert names == sorted(p.name for p in dir_b.iterdir())
  assert any("array_record" in n for n in names)
  _, mismatch, errors = filecmp.cmpfiles(dir_a, dir_b, names, shallow=False)
  assert not mismatch and not errors, mismatch
  assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["pairs"]  # no downloads/ clutter


def test_mixed_token_ids_across_records_is_an_error(tmp_path):
  records = {"train": _preference_records(2), "test": _preference_records(1, with_ids=False)}
  with pytest.raises(ValueError, match=r"all records or none.*'test' record 0"):
    tfds_builders.build_dataset("preference", records, tmp_path, "mixed")


def test_partial_token_id_group_is_an_error(tmp_path):
  record = _preference_records(1)[0]
  del record["rejected_ids"]
  with pytest.raises(ValueError, match=r"pair-0.*lacks \['rejected_ids'\]"):
    tfds_builders.build_dataset("preference", {"train": [record]}, tmp_path, "partial")


def test_explicit_with_token_ids_false_rejects_given_ids(tmp_path):
  with pytest.raises(ValueError, match="built without token ids"):
    tfds_builders.build_dataset("preference", {"train": _preference_records(1)}, tmp_path, "x",
                                with_token_ids=False)


@pytest.mark.parametrize("change, error, message", [
    ({"colour": "red"}, ValueError, r"pair-0.*unknown field\(s\) \['colour'\]"),
    ({"chosen": 3}, TypeError, r"pair-0.*'chosen' must be str, got int"),
    ({"weight": True}, TypeError, r"'weight' must be a number"),
    ({"weight": float("nan")}, ValueError, r"'weight' must be finite"),
    ({"tie": 1}, TypeError, r"'tie' must be bool"),
    ({"chosen_ids": [1.5]}, TypeError, r"'chosen_ids' must be a flat list of ints"),
    ({"chosen_ids": "12"}, TypeError, r"'chosen_ids' must be a list of ints"),
    ({"chosen_ids": [2**31]}, ValueError, r"outside int32"),
])
def test_bad_field_values_name_the_record_and_field(tmp_path, change, error, message):
  records = _preference_records(3)
  records[2].update(change)
  with pytest.raises(error, match=message.replace("pair-0", "pair-2")):
    tfds_builders.build_dataset("preference", {"train": records}, tmp_path, "bad")
  assert not (tmp_path / "bad").exists()  # nothing half-written


def test_missing_required_field_is_named(tmp_path):
  record = _sft_records(1)[0]
  del record["response"]
  with pytest.raises(ValueError, match=r"sft split 'train' record 0.*missing field 'response'"):
    tfds_builders.build_dataset("sft", {"train": [record]}, tmp_path, "bad")


@pytest.mark.parametrize("mask, message", [([0, 1], "has length 2 but 'token_ids' has length 3"),
                                           ([0, 2, 1], "only 0 and 1")])
def test_sft_loss_mask_is_checked(tmp_path, mask, message):
  record = {**_sft_records(2)[1], "loss_mask": mask}
  with pytest.raises(ValueError, match=message):
    tfds_builders.build_dataset("sft", {"train": [record]}, tmp_path, "bad")


def test_duplicate_example_ids_in_a_split_are_rejected(tmp_path):
  records = _prompt_records(3)
  records[2]["id"] = "q0"
  with pytest.raises(ValueError, match=r"id 'q0' appears at records 0 and 2"):
    tfds_builders.build_dataset("prompt", {"train": records}, tmp_path, "dups")


def test_existing_dataset_needs_overwrite(tmp_path):
  path = tfds_builders.build_dataset("prompt", {"train": _prompt_records(2)}, tmp_path, "p")
  with pytest.raises(FileExistsError, match="overwrite=True"):
    tfds_builders.build_dataset("prompt", {"train": _prompt_records(3)}, tmp_path, "p")
  tfds_builders.build_dataset("prompt", {"train": _prompt_records(3)}, tmp_path, "p",
                              overwrite=True)
  assert len(tfds_builders.open_split(path, "train")) == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="dialogue"), "unknown dataset kind 'dialogue'"),
    (dict(name="MyData"), "lower snake case"),
    (dict(records_by_split={}), "at least one split"),
    (dict(records_by_split={"train": []}), "split 'train' has no records"),
])
def test_bad_build_arguments(tmp_path, kwargs, message):
  args = dict(kind="prompt", records_by_split={"train": _prompt_records(1)}, data_dir=tmp_path,
              name="ok")
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    tfds_builders.build_dataset(**args)


def test_open_split_errors(tmp_path):
  path = tfds_builders.build_dataset("prompt", {"train": _prompt_records(1)}, tmp_path, "p")
  with pytest.raises(KeyError, match=r"split 'dev' not in .* available: \['train'\]"):
    tfds_builders.open_split(path, "dev")
  with pytest.raises(FileNotFoundError, match="dataset_info.json missing"):
    tfds_builders.open_split(tmp_path / "nothing", "train")
