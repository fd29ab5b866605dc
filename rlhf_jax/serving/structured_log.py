"""Structured (one JSON object per line) logs for the reward-model service.

The service logs through the standard `logging` module with machine-readable fields passed as
`extra={"fields": {...}}`: one "request" record per /v1/score call (request id, model, version,
items, cache hits, status, error kind, latency) on `rlhf_jax.serving.access`, and one record
per model event (loaded, canary set, promoted, rolled back, removed) on `rlhf_jax.serving`.
`JsonFormatter` renders them as

  {"ts": 1700000000.123, "level": "INFO", "logger": "rlhf_jax.serving.access",
   "msg": "request", "request_id": "...", "model": "rm", "status": 200, "latency_ms": 3.2, ...}
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

ACCESS_LOGGER = "rlhf_jax.serving.access"
EVENT_LOGGER = "rlhf_jax.serving"


class JsonFormatter(logging.Formatter):
  """Formats a record as one JSON line: ts, level, logger, msg, then its `fields`."""

  def format(self, record: logging.LogRecord) -> str:
    out: dict[str, Any] = {"ts": round(record.created, 6), "level": record.levelname,
                           "logger": record.name, "msg": record.getMessage()}
    out.update(getattr(record, "fields", {}) or {})
    if record.exc_info:
      out["exception"] = self.formatException(record.exc_info)
    return json.dumps(out, default=str, ensure_ascii=False)


def configure(level: str = "info", stream: Any = None) -> logging.Handler:
  """Sends the service's loggers (and uvicorn's) to `stream` (stderr) as JSON lines."""
  handler = logging.StreamHandler(stream or sys.stderr)
  handler.setFormatter(JsonFormatter())
  for name in (EVENT_LOGGER, "uvicorn", "uvicorn.error"):
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
  return handler


def log_event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields: Any) -> None:
  """Logs `msg` with structured `fields`."""
  logger.log(level, msg, extra={"fields": fields})
