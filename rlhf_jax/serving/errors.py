"""Errors of the reward-model service, each with its HTTP status and a short machine-readable kind.

Every failure the server can report is one of these; `app.py` turns them into
`{"error": {"kind": ..., "message": ...}}` JSON with the status below, and the metrics count them
by kind. Messages name the offending field, item index or model so a caller can fix the request.

  status  kind               meaning
  400     malformed_json     the body is not JSON
  403     admin_disabled     an admin route was called with admin routes switched off
  404     unknown_model      no such model name or version (or route)
  405     method_not_allowed wrong HTTP method for the route
  409     conflict           a version that is already loaded, or removing the serving version
  413     request_too_large  the body exceeds limits.max_request_bytes
  413     batch_too_large    more items than limits.max_items_per_request
  422     invalid_request    a field is missing, of the wrong type, or inconsistent
  422     input_too_long     an item exceeds the model's max_seq_len (or limits.max_text_chars)
  422     invalid_input      the model's validate() rejected an item for another reason
  429     queue_full         the model's queue has no room for the request's items (retry later)
  500     scorer_error       the model failed or returned a non-finite value for an item
  500     internal           a bug in the server (logged with a traceback)
  503     not_ready          the server is starting or shutting down
  504     deadline_exceeded  the request's deadline passed before its items were scored
"""
from __future__ import annotations

from typing import Optional


class ServingError(Exception):
  """Base class: a failure with an HTTP status and a kind (see the module docstring)."""

  status: int = 500
  kind: str = "internal"

  def __init__(self, message: str, *, retry_after_s: Optional[float] = None):
    super().__init__(message)
    self.message = message
    self.retry_after_s = retry_after_s

  def to_json(self) -> dict:
    return {"error": {"kind": self.kind, "message": self.message}}


class MalformedJSON(ServingError):
  status, kind = 400, "malformed_json"


class AdminDisabled(ServingError):
  status, kind = 403, "admin_disabled"


class UnknownModel(ServingError):
  status, kind = 404, "unknown_model"


class NotFound(ServingError):
  status, kind = 404, "not_found"


class MethodNotAllowed(ServingError):
  status, kind = 405, "method_not_allowed"


class Conflict(ServingError):
  status, kind = 409, "conflict"


class RequestTooLarge(ServingError):
  status, kind = 413, "request_too_large"


class BatchTooLarge(ServingError):
  status, kind = 413, "batch_too_large"


class InvalidRequest(ServingError):
  status, kind = 422, "invalid_request"


class InputTooLong(ServingError):
  status, kind = 422, "input_too_long"


class InvalidInput(ServingError):
  status, kind = 422, "invalid_input"


class QueueFull(ServingError):
  status, kind = 429, "queue_full"


class ScorerFailed(ServingError):
  status, kind = 500, "scorer_error"


class NotReady(ServingError):
  status, kind = 503, "not_ready"


class DeadlineExceeded(ServingError):
  status, kind = 504, "deadline_exceeded"
