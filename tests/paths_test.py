"""Bucket paths (`gs://...`) through epath for every side file a run writes, checked against a fake
bucket: epath's backend is mocked so that `gs://bucket/...` lands in a local directory, while the
code under test only ever sees the `gs://` URI (pathlib would have mangled it into `gs:/bucket`
under the current directory, which the tests check stays empty). Orbax array data goes through
tensorstore's own GCS driver and is not exercised here (no network); local paths take the same
epath code.
"""
import contextlib
import json
import os
import pathlib

import ml_collections
import pytest
from etils import epath
from etils.epath import testing as epath_testing

from rlhf_jax.algorithms import metrics, run_setup
from rlhf_jax.checkpointing import paths, registry

TEXTS = [f"the quick brown fox {i} jumps over the lazy dog number {i * 7} and sings" for i in range(300)]


@contextlib.contextmanager
def fake_bucket(root: pathlib.Path):
  """`gs://<path>` is served from `root/<path>`; local paths are untouched."""
  def local(path):
    text = os.fspath(path)
    return str(root / text[len("gs://"):]) if text.startswith("gs://") else text

  def back(path):
    text = os.fspath(path)
    return "gs://" + os.path.relpath(text, root) if text.startswith(str(root)) else text

  def one(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def open_(original, path, mode="r", *args, **kwargs):
    if any(m in mode for m in "wax"):  # a bucket has no directories: writing needs no parent
      os.makedirs(os.path.dirname(local(path)), exist_ok=True)
    return original(local(path), mode, *args, **kwargs)

  def two(original, path, dst, *args, **kwargs):
    return original(local(path), local(dst), *args, **kwargs)

  def glob(original, pattern):
    return [back(p) for p in original(local(pattern))]

  with epath_testing.mock_epath(open=open_, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one,
                                remove=one, rmtree=one, stat=one, glob=glob, rename=two, replace=two,
                                copy=two):
    yield


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  root, cwd = tmp_path / "gcs", tmp_path / "cwd"
  (root / "bucket").mkdir(parents=True)
  cwd.mkdir()
  monkeypatch.chdir(cwd)  # a pathlib-mangled "gs:/bucket/..." would appear here
  with fake_bucket(root):
    yield root / "bucket"  # the contents of gs://bucket
  assert not any(cwd.iterdir()), f"files written through pathlib: {list(cwd.rglob('*'))}"


def test_as_path_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(paths.as_path("gs://bucket/runs/sft")) == "gs://bucket/runs/sft"
  assert str(run_setup.registry_dir("gs://bucket/runs/sft")) == "gs://bucket/runs/artifacts"
  assert str(run_setup.registry_dir("gs://bucket/runs/sft", "gs://other/reg")) == "gs://other/reg"
  assert str(run_setup.workdir_path("runs/sft")) == str(tmp_path / "runs" / "sft")
  assert str(run_setup.registry_dir(pathlib.Path("runs/sft"))) == str(tmp_path / "runs" / "artifacts")
  assert paths.is_remote("gs://b/x") and paths.is_remote(epath.Path("s3://b/x"))
  assert not paths.is_remote(tmp_path) and not paths.is_remote("relative/gs://x")
  with pytest.raises(ValueError, match="empty path"):
    paths.as_path("")


def test_atomic_write_leaves_no_temporary_file(tmp_path):
  target = tmp_path / "summary.json"
  paths.atomic_write_text(target, '{"a": 1}')
  paths.atomic_write_text(target, '{"a": 2}')
  assert json.loads(target.read_text()) == {"a": 2} and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_metrics_jsonl_in_a_bucket_is_uploaded_whole(bucket):
  uri = "gs://bucket/run/metrics.jsonl"
  writer = metrics.JsonlWriter(uri, upload_every_s=3600)
  assert str(writer.path) == uri
  for step in (1, 2, 3):
    writer.write_scalars(step, {"loss/total": 1.0 / step})
  assert not (bucket / "run" / "metrics.jsonl").exists()  # objects cannot be appended: uploaded on flush
  writer.flush()
  assert [r["step"] for r in metrics.read_jsonl(uri)] == [1, 2, 3]
  writer.rewind(2)  # a resumed run drops steps after its checkpoint, in the bucket too
  assert [r["step"] for r in metrics.read_jsonl(uri)] == [1, 2]
  writer.close()
  again = metrics.JsonlWriter(uri, upload_every_s=0.0)  # 0: every record is uploaded at once
  again.write_scalars(3, {"loss/total": float("nan")})
  lines = (bucket / "run" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [1, 2, 3] and json.loads(lines[-1])["loss/total"] is None


def test_registry_records_in_a_bucket(bucket):
  reg = "gs://bucket/runs/artifacts"
  record = {"artifact_id": "sft_policy@0123456789ab", "kind": "policy", "params_path": "gs://bucket/runs/sft/export"}
  path = registry.register(reg, record)
  assert str(path) == f"{reg}/sft_policy@0123456789ab.json"
  assert json.loads((bucket / "runs" / "artifacts" / "sft_policy@0123456789ab.json").read_text()) == record
  assert registry.resolve(reg, "sft_policy@0123456789ab") == record
  assert registry.resolve(reg, f"{reg}/sft_policy@0123456789ab.json") == record
  with pytest.raises(FileNotFoundError, match=r"known: \['sft_policy@0123456789ab'\]"):
    registry.resolve(reg, "sft_policy@ffffffffffff")


def test_tokenizer_and_summary_in_a_bucket(bucket):
  cfg = ml_collections.ConfigDict({"path": "", "vocab_size": 300, "model_type": "bpe"})
  tok = run_setup.tokenizer_from_config(cfg, "gs://bucket/run", lambda: TEXTS)
  assert (bucket / "run" / "tokenizer.model").read_bytes() == tok.to_bytes()

  def must_not_train():
    raise AssertionError("a resumed run must reload the saved tokenizer")
  assert run_setup.tokenizer_from_config(cfg, "gs://bucket/run", must_not_train).id == tok.id
  cfg.path = "gs://bucket/run/tokenizer.model"
  assert run_setup.tokenizer_from_config(cfg, "gs://bucket/elsewhere", must_not_train).id == tok.id
  run_setup.write_json_side_file("gs://bucket/run/summary.json", '{"ok": true}')
  assert json.loads((bucket / "run" / "summary.json").read_text()) == {"ok": True}
  writers = metrics.make_writers("gs://bucket/run", tensorboard=False)
  writers.write_scalars(1, {"loss/total": 0.5})
  writers.close()
  assert metrics.read_jsonl("gs://bucket/run/metrics.jsonl") == [{"step": 1, "loss/total": 0.5}]
