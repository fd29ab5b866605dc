"""Turning `ModelSpec`s into scorers and a populated registry.

`load_scorer` is the single place that knows how to build a scorer from a spec. Real reward-model
checkpoints are not loadable yet (the reward-model trainer and its batched `score(prompts,
responses)` API are being written); `load_checkpoint_scorer` is the function to fill in then:
restore the parameters, build the bucketed scoring function and wrap it with `ModelScorer`.
Until then `demo=True` serves the deterministic toy scorer under every configured name.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from rlhf_jax.serving import registry as registry_lib
from rlhf_jax.serving.config import ModelSpec, ServingConfig
from rlhf_jax.serving.scorer import HashScorer, Scorer

Loader = Callable[[ModelSpec], Scorer]


def hash_scorer(spec: ModelSpec) -> HashScorer:
  """The toy scorer a spec describes (kind="hash", or any kind in demo mode)."""
  return HashScorer(name=spec.name, salt=spec.salt, offset=spec.offset,
                    ensemble_size=spec.ensemble_size, max_batch_size=spec.max_batch_size,
                    max_seq_len=spec.max_seq_len, batch_delay_s=spec.batch_delay_ms / 1000.0,
                    version=spec.version)


def load_checkpoint_scorer(spec: ModelSpec) -> Scorer:
  """Loads a trained reward-model checkpoint as a scorer. Not implemented yet.

  To fill in once the reward model lands: restore its parameters from `spec.path`, load the
  tokenizer from `spec.tokenizer_path`, and return

      ModelScorer(name=spec.name, version=spec.version or directory_version(spec.path),
                  score_fn=<the reward model's batched score(prompts, responses)>,
                  tokenizer=tokenizer, max_seq_len=spec.max_seq_len,
                  max_batch_size=spec.max_batch_size)
  """
  raise NotImplementedError(
      f"cannot load reward-model checkpoint {spec.path!r} for model {spec.name!r}: loading "
      "kind='checkpoint' is not implemented yet (fill in "
      "rlhf_jax.serving.loading.load_checkpoint_scorer); run with --config.demo=True to serve the "
      "toy scorer instead")


def load_scorer(spec: ModelSpec, *, demo: bool = False) -> Scorer:
  """Builds the scorer of one spec; `demo` serves the toy scorer whatever the kind."""
  if demo or spec.kind == "hash":
    return hash_scorer(spec)
  if spec.kind == "checkpoint":
    return load_checkpoint_scorer(spec)
  raise ValueError(f"model {spec.name!r}: unknown kind {spec.kind!r}")


def spec_from_json(name: str, payload: dict) -> ModelSpec:
  """A ModelSpec from an admin request body ({"kind": ..., "path": ..., ...}) for model `name`.

  Raises:
    ValueError: naming an unknown field or a field of the wrong type.
  """
  fields = {f.name: f for f in dataclasses.fields(ModelSpec)}
  unknown = sorted(set(payload) - set(fields) - {"name"})
  if unknown:
    raise ValueError(f"unknown model spec field(s) {unknown}; known: {sorted(fields)}")
  if payload.get("name", name) != name:
    raise ValueError(f"spec name {payload['name']!r} differs from the model in the URL {name!r}")
  values = {k: v for k, v in payload.items() if k != "name"}
  for key, value in values.items():
    default = fields[key].default
    expected = float if isinstance(default, float) else type(default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float \
        else isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
      raise ValueError(f"model spec field {key!r} must be {expected.__name__}, got {value!r}")
  return ModelSpec(name=name, **values)


def build_registry(config: ServingConfig, loader: Optional[Callable[..., Scorer]] = None
                   ) -> registry_lib.ModelRegistry:
  """A registry holding every configured model version (canaries get config.canary_fraction)."""
  loader = loader or (lambda spec: load_scorer(spec, demo=config.demo))
  registry = registry_lib.ModelRegistry(seed=config.routing_seed, stats_window=config.stats_window)
  ordered = sorted(config.models, key=lambda m: m.role != "stable")  # stable versions first
  for spec in ordered:
    registry.add(loader(spec), role=spec.role, canary_fraction=config.canary_fraction)
  return registry
