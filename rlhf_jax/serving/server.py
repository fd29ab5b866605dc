"""Running the service with uvicorn: in the foreground (the entry point) or a background thread.

    registry = loading.build_registry(config)
    serve(config, registry)                              # blocks; SIGINT / SIGTERM stop it

    with ServerThread(build_app(config, registry)) as server:   # tests, notebooks, trainers
      client = RewardClient(server.url, model="rm")

Both bind the socket themselves before uvicorn starts, so port 0 picks a free port with no race
and the bound port is known (`ServerThread.port`, or the `port_file` written by `serve`).
"""
from __future__ import annotations

import os
import pathlib
import socket
import threading
import time
from typing import Callable, Optional

import uvicorn
from starlette.applications import Starlette

from rlhf_jax.serving import app as app_lib
from rlhf_jax.serving import loading
from rlhf_jax.serving import service as service_lib
from rlhf_jax.serving.config import ServingConfig
from rlhf_jax.serving.metrics import ServingMetrics
from rlhf_jax.serving.registry import ModelRegistry


def build_app(config: ServingConfig, registry: ModelRegistry,
              loader: Optional[Callable] = None) -> Starlette:
  """The ASGI app serving `registry`; `loader` (default: load_scorer) backs the admin load route."""
  loader = loader or (lambda spec: loading.load_scorer(spec, demo=config.demo))
  service = service_lib.RewardService(registry, config, ServingMetrics(), loader=loader)
  app = app_lib.create_app(service)
  app.state.service = service
  return app


def bind_socket(host: str, port: int) -> socket.socket:
  """A listening-ready TCP socket bound to (host, port); port 0 picks a free one."""
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
  # TCP, and without it Nagle's algorithm delays every keep-alive response by ~40 ms.
  sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise OSError(f"cannot bind {host}:{port}: {e.strerror}") from None
  sock.set_inheritable(True)
  return sock


def _uvicorn_config(app: Starlette, log_level: str, configure_logging: bool) -> uvicorn.Config:
  kwargs = {} if configure_logging else {"log_config": None}
  return uvicorn.Config(app, loop="asyncio", http="h11", lifespan="on", log_level=log_level,
                        access_log=False, timeout_keep_alive=30, timeout_graceful_shutdown=5,
                        **kwargs)


class ServerThread:
  """uvicorn serving `app` from a daemon thread on a loopback port (default: a free one)."""

  def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0,
               log_level: str = "warning"):
    self.app = app
    self._sock = bind_socket(host, port)
    self.host, self.port = self._sock.getsockname()[:2]
    self._server = uvicorn.Server(_uvicorn_config(app, log_level, configure_logging=False))
    self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                    name=f"uvicorn-{self.port}", daemon=True)

  @property
  def url(self) -> str:
    host = f"[{self.host}]" if ":" in self.host else self.host
    return f"http://{host}:{self.port}"

  @property
  def service(self) -> service_lib.RewardService:
    """The service of an app made by build_app (possibly wrapped: `.app` is followed)."""
    app = self.app
    while not isinstance(app, Starlette) and hasattr(app, "app"):
      app = app.app
    return app.state.service

  def start(self, timeout_s: float = 10.0) -> "ServerThread":
    """Starts serving; returns once the server accepts connections."""
    self._thread.start()
    deadline = time.monotonic() + timeout_s
    while not self._server.started:
      if not self._thread.is_alive():
        raise RuntimeError(f"server thread on {self.url} exited during start-up")
      if time.monotonic() > deadline:
        raise TimeoutError(f"server on {self.url} did not start within {timeout_s} s")
      time.sleep(0.005)
    return self

  def stop(self, timeout_s: float = 10.0) -> None:
    """Graceful shutdown: stops accepting, finishes in-flight requests, stops the batchers."""
    self._server.should_exit = True
    if self._thread.is_alive():
      self._thread.join(timeout_s)
    self._sock.close()

  def __enter__(self) -> "ServerThread":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()


def serve(config: ServingConfig, registry: ModelRegistry, *,
          port_file: Optional[str | os.PathLike] = None, loader: Optional[Callable] = None) -> None:
  """Serves in the foreground until SIGINT / SIGTERM; writes the bound port to `port_file`."""
  sock = bind_socket(config.host, config.port)
  port = sock.getsockname()[1]
  if port_file:
    tmp = pathlib.Path(f"{port_file}.tmp{os.getpid()}")
    tmp.write_text(str(port))
    os.replace(tmp, port_file)  # atomic: a reader never sees a partial number
  server = uvicorn.Server(_uvicorn_config(build_app(config, registry, loader), config.log_level,
                                          configure_logging=False))
  try:
    server.run(sockets=[sock])
  finally:
    sock.close()
