"""Tests of rlhf_jax.data.manifest."""
import hashlib
import json
import re

import pytest

from rlhf_jax.data import manifest, records
from rlhf_jax.data.schemas import SCHEMA_VERSION
from rlhf_jax.data.validation import IngestionReport


@pytest.fixture
def dataset(tmp_path):
  """A source file and a prepared folder with two splits."""
  src = tmp_path / "raw" / "src.jsonl"
  src.parent.mkdir()
  src.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
  out = tmp_path / "out"
  records.write_jsonl(out / "train.jsonl.gz", [{"i": i} for i in range(5)])
  records.write_jsonl(out / "eval.jsonl.gz", [{"i": 9}])
  report = IngestionReport(source="src", records_read=7, kept=6)
  report.drop("empty_chosen", 3)
  return src, out, report


def _build(src, out, report, **kw):
  args = dict(root=out, outputs={"train": out / "train.jsonl.gz", "eval": [out / "eval.jsonl.gz"]},
              counts={"train": 5, "eval": 1}, sources=[src], report=report, tokenizer_id="abc123",
              params={"seed": 0, "eval_fraction": 0.2})
  args.update(kw)
  return manifest.build_manifest("toy", **args)


def test_content_and_id(dataset):
  src, out, report = dataset
  m = _build(src, out, report)
  assert m["name"] == "toy" and m["schema_version"] == SCHEMA_VERSION
  assert re.fullmatch(r"toy@[0-9a-f]{12}", m["dataset_id"])
  train_bytes = (out / "train.jsonl.gz").read_bytes()
  assert m["splits"]["train"] == {"count": 5, "files": [
      {"path": "train.jsonl.gz", "sha256": hashlib.sha256(train_bytes).hexdigest(),
       "bytes": len(train_bytes)}]}
  assert m["sources"] == [{"name": "raw/src.jsonl", "path": str(src),
                           "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                           "bytes": src.stat().st_size}]
  assert m["filters"] == {"records_read": 7, "kept": 6, "dropped": {"empty_chosen": 1},
                          "truncated": {}}
  assert m["tokenizer_id"] == "abc123" and m["params"] == {"seed": 0, "eval_fraction": 0.2}
  # The id is a hash of the canonical content without timestamps and local source paths.
  content = {k: v for k, v in m.items() if k not in ("dataset_id", "created_at")}
  content["sources"] = [{k: v for k, v in s.items() if k != "path"} for s in m["sources"]]
  canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  assert m["dataset_id"] == "toy@" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def test_id_is_stable_and_sensitive(dataset, tmp_path):
  src, out, report = dataset
  base = _build(src, out, report)["dataset_id"]
  again = _build(src, out, report)
  again["created_at"] = "1999-01-01T00:00:00+00:00"
  assert manifest.dataset_id(again) == base
  # Moving the source elsewhere does not change the id (same name, bytes and hash).
  moved = tmp_path / "elsewhere" / "raw" / "src.jsonl"
  moved.parent.mkdir(parents=True)
  moved.write_bytes(src.read_bytes())
  assert _build(moved, out, report)["dataset_id"] == base
  # Any content change does.
  assert _build(src, out, report, params={"seed": 1, "eval_fraction": 0.2})["dataset_id"] != base
  assert _build(src, out, report, tokenizer_id="other")["dataset_id"] != base
  assert _build(src, out, None)["dataset_id"] != base
  assert _build(src, out, report, counts={"train": 4, "eval": 1})["dataset_id"] != base
  records.write_jsonl(out / "eval.jsonl.gz", [{"i": 8}])
  assert _build(src, out, report)["dataset_id"] != base


def test_write_and_verify(dataset):
  src, out, report = dataset
  m = _build(src, out, report)
  path = out / "manifest.json"
  assert manifest.write_manifest(path, m) == m["dataset_id"]
  assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl.gz", "manifest.json", "train.jsonl.gz"]
  assert manifest.verify_manifest(path) == m
  assert manifest.verify_manifest(path, check_sources=True) == m


def test_verify_refuses_tampered_truncated_or_missing_files(dataset):
  src, out, report = dataset
  path = out / "manifest.json"
  manifest.write_manifest(path, _build(src, out, report))
  train = out / "train.jsonl.gz"
  good = train.read_bytes()
  train.write_bytes(good[:-4])
  with pytest.raises(manifest.ManifestError, match=re.escape(str(train)) + ".*truncated"):
    manifest.verify_manifest(path)
  train.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
  with pytest.raises(manifest.ManifestError, match=re.escape(str(train)) + ": sha256 .*modified"):
    manifest.verify_manifest(path)
  train.unlink()
  with pytest.raises(manifest.ManifestError, match=re.escape(str(train)) + ": listed in .* missing"):
    manifest.verify_manifest(path)
  train.write_bytes(good)
  manifest.verify_manifest(path)
  src.write_text("changed\n")
  manifest.verify_manifest(path)  # sources are only checked on request
  with pytest.raises(manifest.ManifestError, match=re.escape(str(src))):
    manifest.verify_manifest(path, check_sources=True)


def test_verify_refuses_an_edited_or_malformed_manifest(dataset):
  src, out, report = dataset
  path = out / "manifest.json"
  m = _build(src, out, report)
  manifest.write_manifest(path, m)
  edited = dict(m, splits={**m["splits"], "train": {**m["splits"]["train"], "count": 999}})
  path.write_text(json.dumps(edited))
  with pytest.raises(manifest.ManifestError, match="manifest.json: content does not match dataset_id"):
    manifest.verify_manifest(path)
  path.write_text('{"name": "toy",\n "oops": }')
  with pytest.raises(manifest.ManifestError, match="manifest.json:2: malformed manifest JSON"):
    manifest.verify_manifest(path)
  path.write_text('{"name": "toy"}')
  with pytest.raises(manifest.ManifestError, match="lacks 'dataset_id'"):
    manifest.verify_manifest(path)
  with pytest.raises(manifest.ManifestError, match="nothing.json: cannot read"):
    manifest.verify_manifest(out / "nothing.json")
  with pytest.raises(manifest.ManifestError, match="does not match its content"):
    manifest.write_manifest(path, dict(m, name="renamed"))


def test_build_checks_arguments(dataset, tmp_path):
  src, out, report = dataset
  with pytest.raises(manifest.ManifestError, match="not under the manifest folder"):
    _build(src, out, report, outputs={"train": src, "eval": out / "eval.jsonl.gz"})
  with pytest.raises(manifest.ManifestError, match="counts splits"):
    _build(src, out, report, counts={"train": 5})
  with pytest.raises(manifest.ManifestError, match="non-negative int"):
    _build(src, out, report, counts={"train": -1, "eval": 1})
  with pytest.raises(manifest.ManifestError, match="without '@'"):
    manifest.build_manifest("a@b", root=out, outputs={}, counts={})
  with pytest.raises(manifest.ManifestError, match="JSON-serialisable"):
    _build(src, out, report, params={"policy": object()})
