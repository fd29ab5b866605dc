"""Tests of rlhf_jax.data.records: JSON/JSONL(+gzip) reading with line numbers, atomic writing."""
import gzip
import json
import re

import pytest

from rlhf_jax.data import records
from rlhf_jax.data.validation import DataError

ROWS = [{"a": 1}, {"a": 2, "t": "x\n\ny"}, {"a": 3, "t": "“quote” é"}]


def _jsonl(rows) -> bytes:
  return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def _read(path):
  return list(records.iter_records(path))


def _only_files(folder):
  return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("name, compress", [
    ("d.jsonl", False), ("d.jsonl.gz", True),
    ("gzip_without_suffix.jsonl", True),  # detected by magic bytes, not by name
    ("plain_with_gz_suffix.jsonl.gz", False),
])
def test_jsonl_plain_and_gzip(tmp_path, name, compress):
  path = tmp_path / name
  data = _jsonl(ROWS)
  path.write_bytes(gzip.compress(data) if compress else data)
  assert records.is_gzip(path) == compress
  assert _read(path) == [(1, ROWS[0]), (2, ROWS[1]), (3, ROWS[2])]


def test_blank_lines_and_bom_and_crlf(tmp_path):
  path = tmp_path / "d.jsonl"
  path.write_bytes(b"\xef\xbb\xbf\n" + b'{"a": 1}\r\n\n  \n{"a": 2}')  # BOM, CRLF, no final newline
  assert _read(path) == [(2, {"a": 1}), (5, {"a": 2})]


def test_json_array_reports_the_line_each_record_starts_on(tmp_path):
  path = tmp_path / "d.json"
  path.write_text('\n[\n  {"a": 1},\n  {"a": 2,\n   "b": [1, 2]},\n\n  {"a": 3}\n]\n')
  assert _read(path) == [(3, {"a": 1}), (4, {"a": 2, "b": [1, 2]}), (7, {"a": 3})]
  gz = tmp_path / "d.json.gz"
  gz.write_bytes(gzip.compress(path.read_bytes()))
  assert _read(gz) == _read(path)


@pytest.mark.parametrize("content, line, message", [
    (b'{"a": 1}\n{"a": 2}\n{"a": 3,,}\n{"a": 4}\n', 3, "malformed JSON"),
    (b'{"a": 1}\n{"a": 2\n', 2, "malformed JSON"),
    (b'{"a": 1}\n[1, 2]\n', 2, "expected a JSON object per record, got list"),
    (b'{"a": 1}\n{"a": "\xff\xfe"}\n', 2, "invalid UTF-8"),
    (b'[\n {"a": 1},\n {"a": 2}\n {"a": 3}\n]', 4, "expected ',' or ']'"),
    (b'[\n {"a": 1},\n {"a": tru}\n]', 3, "malformed JSON"),
    (b'[\n {"a": 1},\n "str"\n]', 3, "expected a JSON object"),
    (b'[\n {"a": 1}\n', 3, "unterminated array"),
    (b'[{"a": 1}]\n{"b": 2}\n', 1, "extra data"),
])
def test_malformed_content_names_file_and_line(tmp_path, content, line, message):
  path = tmp_path / "bad.jsonl"
  path.write_bytes(content)
  with pytest.raises(DataError, match=re.escape(f"{path}:{line}: ") + f".*{message}") as info:
    _read(path)
  assert info.value.line == line and info.value.path == str(path)


@pytest.mark.parametrize("content", [b"", b"\n  \n\t\n", b"[]", b" [ \n ] \n"])
def test_empty_files(tmp_path, content):
  path = tmp_path / "empty.jsonl"
  path.write_bytes(content)
  with pytest.raises(DataError, match=re.escape(str(path)) + ": empty file"):
    _read(path)
  gz = tmp_path / "empty.jsonl.gz"
  gz.write_bytes(gzip.compress(content))
  with pytest.raises(DataError, match="empty.jsonl.gz: empty file"):
    _read(gz)


def test_truncated_and_corrupt_gzip(tmp_path):
  data = gzip.compress(_jsonl([{"i": i, "pad": "x" * 50} for i in range(200)]))
  truncated = tmp_path / "truncated.jsonl.gz"
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match="truncated.jsonl.gz: truncated or corrupt gzip"):
    _read(truncated)
  corrupt = tmp_path / "corrupt.jsonl.gz"
  corrupt.write_bytes(data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:])
  with pytest.raises(DataError, match="corrupt.jsonl.gz"):
    _read(corrupt)


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match="nope.jsonl: cannot open"):
    _read(tmp_path / "nope.jsonl")


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_write_jsonl_roundtrip_and_determinism(tmp_path, name):
  path = tmp_path / name
  assert records.write_jsonl(path, ROWS) == 3
  assert records.read_jsonl_dicts(path) == ROWS
  first = path.read_bytes()
  records.write_jsonl(path, iter(ROWS))
  assert path.read_bytes() == first  # gzip written with mtime 0: same content, same bytes
  assert _only_files(tmp_path) == [name]


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz"])
def test_write_jsonl_is_atomic(tmp_path, name):
  def failing():
    yield {"ok": 1}
    raise DataError("src.jsonl", "boom", line=2)

  path = tmp_path / name
  with pytest.raises(DataError, match="src.jsonl:2: boom"):
    records.write_jsonl(path, failing())
  assert _only_files(tmp_path) == []  # no output, no temp file
  records.write_jsonl(path, ROWS)
  before = path.read_bytes()
  with pytest.raises(DataError):
    records.write_jsonl(path, failing())
  assert path.read_bytes() == before  # the previous version is untouched
  assert _only_files(tmp_path) == [name]


def test_write_text_atomic(tmp_path):
  path = tmp_path / "sub" / "m.json"
  records.write_text_atomic(path, "é\n")
  assert path.read_text(encoding="utf-8") == "é\n"
  assert _only_files(path.parent) == ["m.json"]
