"""Tests of rlhf_jax.data.prepare: ingest -> dedup -> split -> atomic files + manifest."""
import json
import re

import pytest

from rlhf_jax.data import dedup, manifest, prepare, records
from rlhf_jax.data.schemas import PreferenceExample, PromptExample
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import DataError, ValidationPolicy


def _rows(n, offset=0):
  return [{"prompt": f"Question {i % 40}?", "chosen": f"good answer {i}", "rejected": f"bad {i}"}
          for i in range(offset, offset + n)]


def _write(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_end_to_end(tmp_path, testdata_dir):
  a = _write(tmp_path / "src" / "a.jsonl", _rows(100))
  b_rows = _rows(20) + [{"prompt": "question 3? ", "chosen": "GOOD answer 3", "rejected": "bad 3"},
                        {"prompt": "q", "chosen": "same", "rejected": "same"}]
  b = _write(tmp_path / "src" / "b.jsonl", b_rows)
  tok = Tokenizer.load(testdata_dir / "tokenizer_512.model")
  out = tmp_path / "out"
  m = prepare.prepare_dataset("toy", [a, b], out, eval_fraction=0.25, seed=1, tokenizer=tok,
                              params={"note": "unit test"})
  assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl.gz", "manifest.json", "train.jsonl.gz"]
  assert manifest.verify_manifest(out / "manifest.json") == m
  # b's first 20 rows repeat a's exactly, and one more repeats a's row 3 after normalisation.
  assert m["filters"] == {"records_read": 122, "kept": 100,
                          "dropped": {"duplicate_normalized": 21, "identical_responses": 1},
                          "truncated": {}}
  train = [PreferenceExample.from_dict(d) for d in records.read_jsonl_dicts(out / "train.jsonl.gz")]
  evals = [PreferenceExample.from_dict(d) for d in records.read_jsonl_dicts(out / "eval.jsonl.gz")]
  assert m["splits"]["train"]["count"] == len(train) and m["splits"]["eval"]["count"] == len(evals)
  assert len(train) + len(evals) == 100 and evals and train
  dedup.check_prompt_disjoint(train, evals)
  assert m["tokenizer_id"] == tok.id and m["params"]["note"] == "unit test"
  assert m["params"]["policy"]["on_identical"] == "drop" and m["params"]["seed"] == 1
  # Preparing again elsewhere gives byte-identical files and the same dataset id.
  m2 = prepare.prepare_dataset("toy", [a, b], tmp_path / "out2", eval_fraction=0.25, seed=1,
                               tokenizer=tok, params={"note": "unit test"})
  assert m2["dataset_id"] == m["dataset_id"]
  assert (tmp_path / "out2" / "train.jsonl.gz").read_bytes() == (out / "train.jsonl.gz").read_bytes()
  # A different seed moves prompts between splits, so the id changes.
  m3 = prepare.prepare_dataset("toy", [a, b], tmp_path / "out3", eval_fraction=0.25, seed=2)
  assert m3["dataset_id"] != m["dataset_id"]


def test_failed_run_leaves_previous_version_intact(tmp_path):
  good = _write(tmp_path / "good.jsonl", _rows(10))
  out = tmp_path / "out"
  m = prepare.prepare_dataset("toy", [good], out)
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  bad = _write(tmp_path / "bad.jsonl", _rows(5))
  with bad.open("a") as f:
    f.write('{"prompt": "q", "chosen": "a"}\n')
  with pytest.raises(DataError, match=re.escape(f"{bad}:6: field 'rejected'")):
    prepare.prepare_dataset("toy", [good, bad], out)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing partial, no temp
  assert manifest.verify_manifest(out / "manifest.json")["dataset_id"] == m["dataset_id"]
  fresh = tmp_path / "fresh"
  with pytest.raises(DataError):
    prepare.prepare_dataset("toy", [bad], fresh)
  assert list(fresh.iterdir()) == []


def test_policy_errors_stop_the_run(tmp_path):
  src = _write(tmp_path / "s.jsonl", _rows(3) + [{"prompt": "q", "chosen": "x", "rejected": "x"}])
  with pytest.raises(DataError, match=re.escape(f"{src}:4:") + ".*identical"):
    prepare.prepare_dataset("toy", [src], tmp_path / "o",
                            policy=ValidationPolicy(on_identical="error"))
  assert list((tmp_path / "o").iterdir()) == []


def test_prompt_datasets_dedup_prompts(tmp_path):
  src = _write(tmp_path / "p.jsonl", [{"prompt": "Hello"}, {"prompt": "hello "}, {"prompt": "Bye"}])
  m = prepare.prepare_dataset("prompts", [src], tmp_path / "o", reader="prompts")
  assert m["filters"]["dropped"] == {"duplicate_prompt_normalized": 1}
  rows = records.read_jsonl_dicts(tmp_path / "o" / "train.jsonl.gz")
  assert [PromptExample.from_dict(r).prompt for r in rows] == ["Hello", "Bye"]
  with pytest.raises(ValueError, match="reader"):
    prepare.prepare_dataset("x", [src], tmp_path / "o2", reader="csv")
