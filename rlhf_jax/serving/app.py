"""HTTP JSON routes of the reward-model service (a Starlette ASGI app).

  GET    /healthz                                liveness: 200 while the process serves HTTP
  GET    /readyz                                 readiness: 200 once every version's batcher runs
  GET    /metrics                                Prometheus text format (metrics.py)
  GET    /v1/models                              models, versions, stable / canary, limits
  POST   /v1/score                               score (prompt, response) pairs
  GET    /v1/models/{name}/compare[?a=..&b=..]   score distributions of two versions + KS statistic
  admin (config.admin_enabled):
  POST   /v1/models/{name}/versions              load a version {"spec": {...}, "role", "fraction"}
  DELETE /v1/models/{name}/versions/{version}    unload a version that gets no unpinned traffic
  POST   /v1/models/{name}/canary                {"version": v, "fraction": f}
  POST   /v1/models/{name}/promote               canary becomes stable
  POST   /v1/models/{name}/rollback              stop routing to the canary
  POST   /v1/models/{name}/stable                {"version": v}: serve v to all unpinned traffic

/v1/score request:  {"model": "rm", "prompts": [...], "responses": [...], "version"?: pinned
version, "request_id"?: echoed and logged, "routing_key"?: canary routing key (default:
request_id), "timeout_ms"?: deadline}.
Response: {"request_id", "model", "version", "scores": [B floats], "outputs": {"raw" | "normalized"
| "std": [B floats], when the model has them}, "num_cached": items answered from the cache}.
Errors: {"error": {"kind", "message"}} with the status listed in errors.py; 429 and 503 carry a
Retry-After header. No failure, malformed input included, stops the server or touches other
requests' items.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rlhf_jax.serving import errors
from rlhf_jax.serving import loading
from rlhf_jax.serving import metrics as metrics_lib
from rlhf_jax.serving import service as service_lib

_LOG = logging.getLogger("rlhf_jax.serving")
Handler = Callable[[Request], Awaitable[Response]]


def _error_response(error: errors.ServingError) -> JSONResponse:
  headers = {}
  if error.retry_after_s is not None:
    headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
  return JSONResponse(error.to_json(), status_code=error.status, headers=headers)


async def _read_json(request: Request, max_bytes: int) -> Any:
  """The decoded body; 413 beyond max_bytes (checked before and while reading), 400 if not JSON."""
  declared = request.headers.get("content-length")
  if declared is not None and declared.isdigit() and int(declared) > max_bytes:
    raise errors.RequestTooLarge(f"request body of {declared} bytes exceeds the limit of "
                                 f"{max_bytes} (limits.max_request_bytes)")
  body = bytearray()
  async for chunk in request.stream():
    body += chunk
    if len(body) > max_bytes:
      raise errors.RequestTooLarge(f"request body exceeds the limit of {max_bytes} bytes "
                                   "(limits.max_request_bytes)")
  try:
    return json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.MalformedJSON(f"request body is not valid JSON: {e}") from None


def create_app(service: service_lib.RewardService) -> Starlette:
  """The ASGI app over `service`; its lifespan starts and stops the batchers."""
  config, metrics = service.config, service.metrics

  def route(template: str, handler: Handler, methods: list[str], admin: bool = False) -> Route:
    async def endpoint(request: Request) -> Response:
      start = time.perf_counter()
      try:
        if admin and not config.admin_enabled:
          raise errors.AdminDisabled("admin routes are disabled (config.admin_enabled=False)")
        response = await handler(request)
      except errors.ServingError as e:
        metrics.errors.labels(e.kind).inc()
        response = _error_response(e)
      except Exception:  # noqa: BLE001  (a bug answers 500 and is logged; the server stays up)
        _LOG.exception("unhandled error on %s %s", request.method, template)
        metrics.errors.labels("internal").inc()
        response = _error_response(errors.ServingError("internal server error (logged)"))
      metrics.requests.labels(template, str(response.status_code)).inc()
      if template == "/v1/score":
        metrics.observe_latency(time.perf_counter() - start)
      return response
    return Route(template, endpoint, methods=methods)

  async def healthz(request: Request) -> Response:
    del request
    return JSONResponse({"status": "ok"})

  async def readyz(request: Request) -> Response:
    del request
    if not service.ready:
      raise errors.NotReady("not ready: batchers are not all running", retry_after_s=1.0)
    return JSONResponse({"status": "ready"})

  async def metrics_route(request: Request) -> Response:
    del request
    return Response(metrics.render(), media_type=metrics_lib.CONTENT_TYPE)

  async def list_models(request: Request) -> Response:
    del request
    return JSONResponse({"models": service.describe()})

  async def score(request: Request) -> Response:
    start = time.perf_counter()
    fields: dict[str, Any] = {}
    request_id, status = request.headers.get("x-request-id", ""), 200
    try:
      body = await _read_json(request, config.limits.max_request_bytes)
      parsed = service_lib.parse_score_request(body, config)
      request_id = parsed.request_id
      fields = {"model": parsed.model, "items": len(parsed.prompts)}
      result = await service.score(parsed)
      fields.update(version=result["version"], num_cached=result["num_cached"])
      return JSONResponse(result)
    except errors.ServingError as e:
      status = e.status
      fields["error_kind"] = e.kind
      raise
    except Exception:
      status = 500
      fields["error_kind"] = "internal"
      raise
    finally:
      service.log_request(request_id, status, time.perf_counter() - start, **fields)

  async def compare(request: Request) -> Response:
    q = request.query_params
    return JSONResponse(service.registry.compare(request.path_params["name"], q.get("a"),
                                                 q.get("b")))

  async def _admin_body(request: Request) -> dict:
    body = await _read_json(request, config.limits.max_request_bytes)
    if not isinstance(body, dict):
      raise errors.InvalidRequest(f"the body must be a JSON object, got {type(body).__name__}")
    return body

  def _field(body: dict, name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
      raise errors.InvalidRequest(f"field {name!r} must be {kind.__name__}, got {value!r:.80}")
    return value

  async def load_version(request: Request) -> Response:
    name = request.path_params["name"]
    body = await _admin_body(request)
    try:
      spec = loading.spec_from_json(name, _field(body, "spec", dict))
    except (TypeError, ValueError) as e:
      raise errors.InvalidRequest(f"field 'spec': {e}") from None
    return JSONResponse(await service.load_version(
        spec, role=_field(body, "role", str, "standby"),
        canary_fraction=_field(body, "fraction", float, config.canary_fraction)))

  async def remove_version(request: Request) -> Response:
    p = request.path_params
    return JSONResponse(await service.remove_version(p["name"], p["version"]))

  async def canary(request: Request) -> Response:
    body = await _admin_body(request)
    return JSONResponse(service.set_canary(request.path_params["name"],
                                           _field(body, "version", str),
                                           _field(body, "fraction", float)))

  async def promote(request: Request) -> Response:
    return JSONResponse(service.promote(request.path_params["name"]))

  async def rollback(request: Request) -> Response:
    return JSONResponse(service.rollback(request.path_params["name"]))

  async def stable(request: Request) -> Response:
    body = await _admin_body(request)
    return JSONResponse(service.set_stable(request.path_params["name"],
                                           _field(body, "version", str)))

  async def http_error(request: Request, exc: HTTPException) -> Response:
    del request
    error = (errors.MethodNotAllowed(f"method not allowed: {exc.detail}")
             if exc.status_code == 405 else errors.NotFound(f"no such route: {exc.detail}"))
    metrics.errors.labels(error.kind).inc()
    return _error_response(error)

  @contextlib.asynccontextmanager
  async def lifespan(app: Starlette):
    del app
    await service.start()
    try:
      yield
    finally:
      await service.stop()

  routes = [
      route("/healthz", healthz, ["GET"]),
      route("/readyz", readyz, ["GET"]),
      route("/metrics", metrics_route, ["GET"]),
      route("/v1/models", list_models, ["GET"]),
      route("/v1/score", score, ["POST"]),
      route("/v1/models/{name}/compare", compare, ["GET"]),
      route("/v1/models/{name}/versions", load_version, ["POST"], admin=True),
      route("/v1/models/{name}/versions/{version}", remove_version, ["DELETE"], admin=True),
      route("/v1/models/{name}/canary", canary, ["POST"], admin=True),
      route("/v1/models/{name}/promote", promote, ["POST"], admin=True),
      route("/v1/models/{name}/rollback", rollback, ["POST"], admin=True),
      route("/v1/models/{name}/stable", stable, ["POST"], admin=True),
  ]
  return Starlette(routes=routes, lifespan=lifespan,
                   exception_handlers={404: http_error, 405: http_error})
