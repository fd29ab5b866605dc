"""Reading and writing record files: JSON arrays and JSONL, plain or gzip-compressed.

Reading streams JSONL line by line and yields `(line_number, record)`; a JSON array is parsed
element by element so each record still carries the line it starts on. Compression is detected
from the gzip magic bytes, not the file name. Every failure raises `DataError` naming the file
and, where there is one, the line: malformed JSON, a record that is not an object, invalid
UTF-8, an empty file, a truncated or corrupt gzip stream.

Writing is atomic: records go to a temporary file in the destination folder that is renamed
into place only after the last record was written, so an error during ingestion (which happens
while the output is being written, since ingestion streams) leaves no partial output. Gzip
output uses mtime 0 so identical content gives identical bytes (and sha256).
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import pathlib
import tempfile
import zlib
from typing import IO, Any, Callable, Iterable, Iterator

from rlhf_jax.data.validation import DataError

GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: str | os.PathLike) -> bool:
  """True when the file starts with the gzip magic bytes."""
  with open(path, "rb") as f:
    return f.read(2) == GZIP_MAGIC


@contextlib.contextmanager
def open_binary(path: str | os.PathLike) -> Iterator[IO[bytes]]:
  """Opens a file for reading bytes, transparently decompressing gzip."""
  try:
    gz = is_gzip(path)
    f = gzip.open(path, "rb") if gz else open(path, "rb")
  except OSError as e:
    raise DataError(path, f"cannot open: {e.strerror or e}") from None
  with f:
    yield f


def _gzip_error(path, e: Exception, line: int | None) -> DataError:
  return DataError(path, f"truncated or corrupt gzip data ({type(e).__name__}: {e}); the file is "
                   "incomplete, re-copy it", line=line)


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
  """Yields `(line_number, record)` for each record of a JSON-array or JSONL file.

  Format detection: after optional whitespace (and a UTF-8 byte-order mark), `[` starts a JSON
  array, anything else is read as JSONL. Blank JSONL lines are skipped. Records must be objects.

  Raises:
    DataError: naming the file (and line) for any unreadable content, or an empty file.
  """
  path = str(path)
  with open_binary(path) as f:
    line_no = 0
    try:
      first = b""
      for raw in f:  # find the first non-blank line to decide the format
        line_no += 1
        first = raw.lstrip(b"\xef\xbb\xbf") if line_no == 1 else raw
        if first.strip():
          break
      if not first.strip():
        raise DataError(path, "empty file (no records)")
      if first.lstrip().startswith(b"["):
        rest = f.read()
        yield from _iter_json_array(path, first + rest, line_no)
        return
      yield from _iter_jsonl(path, first, line_no, f)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
      raise _gzip_error(path, e, None) from None


def _decode(path: str, raw: bytes, line: int) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(path, f"invalid UTF-8 at byte {e.start} of the line", line=line) from None


def _check_object(path: str, record: Any, line: int) -> Any:
  if not isinstance(record, dict):
    raise DataError(path, f"expected a JSON object per record, got {type(record).__name__}",
                    line=line)
  return record


def _iter_jsonl(path: str, first: bytes, first_line: int,
                f: IO[bytes]) -> Iterator[tuple[int, Any]]:
  def lines():
    yield first_line, first
    n = first_line
    for raw in f:
      n += 1
      yield n, raw

  for line_no, raw in lines():
    if not raw.strip():
      continue
    text = _decode(path, raw, line_no)
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(path, f"malformed JSON: {e.msg} (column {e.colno})", line=line_no) from None
    yield line_no, _check_object(path, record, line_no)


def _iter_json_array(path: str, data: bytes, first_line: int) -> Iterator[tuple[int, Any]]:
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = first_line + data.count(b"\n", 0, e.start)
    raise DataError(path, "invalid UTF-8", line=line) from None
  decoder = json.JSONDecoder()
  ws = " \t\r\n"

  def line_at(pos: int) -> int:
    return first_line + text.count("\n", 0, pos)

  def error(msg: str, pos: int) -> DataError:
    return DataError(path, f"malformed JSON: {msg}", line=line_at(pos))

  pos = text.index("[") + 1
  n_records = 0
  while True:
    while pos < len(text) and text[pos] in ws:
      pos += 1
    if pos >= len(text):
      raise error("unterminated array (missing ']')", pos)
    if text[pos] == "]" and n_records == 0:
      pos += 1
      break
    try:
      record, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      raise error(f"{e.msg} (column {e.colno})", e.pos) from None
    yield line_at(pos), _check_object(path, record, line_at(pos))
    n_records += 1
    pos = end
    while pos < len(text) and text[pos] in ws:
      pos += 1
    if pos >= len(text):
      raise error("unterminated array (missing ']')", pos)
    if text[pos] == ",":
      pos += 1
      continue
    if text[pos] == "]":
      pos += 1
      break
    raise error("expected ',' or ']' after a record", pos)
  if text[pos:].strip():
    raise error("extra data after the closing ']'", pos)
  if n_records == 0:
    raise DataError(path, "empty file (the JSON array has no records)")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
  """Yields a temporary file that replaces `path` only if the block finishes without error."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _as_dict(record: Any) -> Any:
  return record.to_dict() if hasattr(record, "to_dict") else record


@contextlib.contextmanager
def jsonl_writer(path: str | os.PathLike) -> Iterator[Callable[[Any], None]]:
  """Yields `write(record)` appending one JSONL line; gzip when `path` ends in `.gz`.

  Atomic like `atomic_writer`: the file appears only when the block exits without error.
  """
  path = pathlib.Path(path)
  with atomic_writer(path, "wb") as raw:
    gz = path.suffix == ".gz"
    out: IO[bytes] = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gz else raw

    def write(record: Any) -> None:
      line = json.dumps(_as_dict(record), ensure_ascii=False, allow_nan=False, sort_keys=True)
      out.write(line.encode("utf-8") + b"\n")

    try:
      yield write
    finally:
      if gz:
        out.close()  # writes the gzip trailer into `raw` (discarded with it on error)


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
  """Writes records (dicts or schema objects) as JSONL, gzip when `path` ends in `.gz`.

  Atomic: when iterating `records` raises (e.g. an ingestion error on line k), the exception
  propagates and no file is created or replaced. Returns the number of records written.
  """
  n = 0
  with jsonl_writer(path) as write:
    for record in records:
      write(record)
      n += 1
  return n


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """Writes a whole text file atomically (UTF-8)."""
  with atomic_writer(path, "wb") as f:
    f.write(text.encode("utf-8"))


def read_jsonl_dicts(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All records of a JSON/JSONL file (plain or gzip) as dicts."""
  return [r for _, r in iter_records(path)]

