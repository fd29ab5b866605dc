"""Typed, validated configuration of the reward-model service.

`configs/serve_reward_model.py` documents every field; `ServingConfig.from_config_dict` turns that
ConfigDict into frozen dataclasses and fails fast with a message naming the offending field.
Library users and tests can build `ServingConfig(...)` directly; the defaults match the config file.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

MODEL_KINDS = ("hash", "checkpoint")
ROLES = ("stable", "canary", "standby")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class Limits:
  """Request limits; exceeding one gives a 4xx answer, never a crash."""

  max_request_bytes: int = 1 << 20  # body size (413 request_too_large)
  max_items_per_request: int = 256  # (prompt, response) pairs per request (413 batch_too_large)
  max_text_chars: int = 65_536  # characters of one prompt or response (422 input_too_long)


@dataclasses.dataclass(frozen=True)
class Batching:
  """Dynamic batching and deadlines."""

  max_batch_size: int = 32  # items per scorer call (also capped by each model's max_batch_size)
  max_wait_ms: float = 5.0  # how long the first queued item waits for others to join its batch
  max_queue_items: int = 4096  # items waiting per model version before 429 queue_full
  default_timeout_ms: float = 10_000.0  # request deadline when the request names none (504)
  max_timeout_ms: float = 60_000.0  # upper bound on a request's own timeout_ms


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One model version to load at start-up."""

  name: str  # model name clients ask for
  kind: str = "hash"  # "hash" (deterministic toy scorer) | "checkpoint" (a trained reward model)
  path: str = ""  # checkpoint directory (kind="checkpoint")
  version: str = ""  # content-hash id; empty: computed from the checkpoint / toy parameters
  role: str = "stable"  # "stable" | "canary" | "standby" (reachable only by pinning its version)
  tokenizer_path: str = ""  # SentencePiece model for length checks (kind="checkpoint")
  max_seq_len: int = 4096  # longest prompt + response (tokens; UTF-8 bytes for kind="hash")
  max_batch_size: int = 64  # largest batch the model accepts
  salt: str = "0"  # kind="hash": seed of the toy scores
  offset: float = 0.0  # kind="hash": mean of the toy scores
  ensemble_size: int = 4  # kind="hash": members (> 1 adds "std")
  batch_delay_ms: float = 0.0  # kind="hash": simulated compute per batch


@dataclasses.dataclass(frozen=True)
class ServingConfig:
  """Everything the server needs (see configs/serve_reward_model.py for the documented fields)."""

  host: str = "127.0.0.1"  # loopback by default: nothing off this machine can reach the server
  port: int = 8000  # 0: pick a free port
  log_level: str = "info"
  demo: bool = False  # serve the toy HashScorer for every model (until checkpoints exist)
  admin_enabled: bool = True  # routes that load / canary / promote / roll back / remove versions
  cache_max_entries: int = 100_000  # LRU cache size in items (0: off)
  stats_window: int = 10_000  # recent scores per version kept for distribution comparisons
  canary_fraction: float = 0.0  # share of unpinned traffic for a model's canary version
  routing_seed: int = 0  # seed of the deterministic canary routing hash
  limits: Limits = Limits()
  batching: Batching = Batching()
  models: tuple[ModelSpec, ...] = ()

  def __post_init__(self):
    validate(self)

  @classmethod
  def from_config_dict(cls, cfg: Mapping[str, Any]) -> "ServingConfig":
    """Builds a validated config from a ConfigDict (or nested dicts) shaped like the config file.

    Raises:
      ValueError: naming the unknown or invalid field.
    """
    cfg = _to_dict(cfg)
    top = {f.name for f in dataclasses.fields(cls)}
    _reject_unknown("config", cfg, top)
    kwargs = {k: v for k, v in cfg.items() if k not in ("limits", "batching", "models")}
    for section, klass in (("limits", Limits), ("batching", Batching)):
      values = cfg.get(section, {})
      _reject_unknown(f"config.{section}", values, {f.name for f in dataclasses.fields(klass)})
      kwargs[section] = klass(**values)
    models = []
    for key, spec in (cfg.get("models") or {}).items():
      spec = dict(spec)
      _reject_unknown(f"config.models.{key}", spec, {f.name for f in dataclasses.fields(ModelSpec)})
      if not spec.get("name"):
        raise ValueError(f"config.models.{key}.name must be a non-empty string")
      models.append(ModelSpec(**spec))
    kwargs["models"] = tuple(models)
    return cls(**kwargs)


def _to_dict(cfg: Any) -> dict:
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  return {k: (_to_dict(v) if isinstance(v, Mapping) else v) for k, v in dict(cfg).items()}


def _reject_unknown(where: str, values: Mapping[str, Any], known: set[str]) -> None:
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")


def _positive(where: str, value: float, allow_zero: bool = False) -> None:
  if not (value >= 0 if allow_zero else value > 0):
    raise ValueError(f"{where} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(cfg: ServingConfig) -> None:
  """Raises ValueError naming the offending field."""
  if not 0 <= cfg.port <= 65535:
    raise ValueError(f"config.port must lie in [0, 65535], got {cfg.port}")
  if cfg.log_level not in LOG_LEVELS:
    raise ValueError(f"config.log_level must be one of {LOG_LEVELS}, got {cfg.log_level!r}")
  _positive("config.cache_max_entries", cfg.cache_max_entries, allow_zero=True)
  _positive("config.stats_window", cfg.stats_window)
  if not 0.0 <= cfg.canary_fraction <= 1.0:
    raise ValueError(f"config.canary_fraction must lie in [0, 1], got {cfg.canary_fraction}")
  for field in dataclasses.fields(Limits):
    _positive(f"config.limits.{field.name}", getattr(cfg.limits, field.name))
  b = cfg.batching
  for name in ("max_batch_size", "max_queue_items", "default_timeout_ms", "max_timeout_ms"):
    _positive(f"config.batching.{name}", getattr(b, name))
  _positive("config.batching.max_wait_ms", b.max_wait_ms, allow_zero=True)
  if b.default_timeout_ms > b.max_timeout_ms:
    raise ValueError(f"config.batching.default_timeout_ms ({b.default_timeout_ms}) exceeds "
                     f"config.batching.max_timeout_ms ({b.max_timeout_ms})")
  seen, stable = set(), set()
  for i, m in enumerate(cfg.models):
    where = f"config.models[{i}] ({m.name!r})"
    if m.kind not in MODEL_KINDS:
      raise ValueError(f"{where}.kind must be one of {MODEL_KINDS}, got {m.kind!r}")
    if m.role not in ROLES:
      raise ValueError(f"{where}.role must be one of {ROLES}, got {m.role!r}")
    if m.kind == "checkpoint" and not m.path and not cfg.demo:
      raise ValueError(f"{where}.path is required for kind='checkpoint'")
    _positive(f"{where}.max_seq_len", m.max_seq_len)
    _positive(f"{where}.max_batch_size", m.max_batch_size)
    if m.version and (m.name, m.version) in seen:
      raise ValueError(f"{where}: version {m.version!r} of {m.name!r} is listed twice")
    seen.add((m.name, m.version))
    if m.role == "stable":
      if m.name in stable:
        raise ValueError(f"{where}: model {m.name!r} has more than one role='stable' entry")
      stable.add(m.name)
  for i, m in enumerate(cfg.models):
    if m.role != "stable" and m.name not in stable:
      raise ValueError(f"config.models[{i}] ({m.name!r}) has role={m.role!r} but the model has no "
                       "role='stable' entry")
