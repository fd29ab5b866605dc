"""Turning `ModelSpec`s into scorers and a populated registry.

`load_scorer` is the single place that knows how to build a scorer from a spec:

  kind="checkpoint"  an exported reward model (RM): the parameters folder `train_reward_model`
                     writes (`<workdir>/export/<name>`, the artifact's "params_path") and the
                     scoring spec next to it (`<path>.json`), loaded by
                     `rm_scoring.load_scorer_from_export` on the first device;
  kind="hash"        the deterministic toy scorer; `demo=True` serves it under every name.
"""
from __future__ import annotations

import dataclasses
import os
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
  """Loads an exported reward model as a scorer (`rm_scoring.RewardModelScorer`).

  The RM's own scoring spec (`<spec.path>.json`) fixes its chat template, bucketed shapes,
  normalisation, calibration, tokenizer and version (the artifact id). The `ModelSpec` adds:

    tokenizer_path  when set, the tokenizer to use instead of the recorded one; it must have the
                    id the RM was trained with (when the spec records one);
    version         when set, replaces the recorded version;
    max_batch_size, max_seq_len
                    upper limits: the RM's batch and length buckets above them are not used, so
                    the scorer's own limits are the largest buckets within them.

  Raises:
    FileNotFoundError: naming the model and path when nothing was exported there.
    ValueError: naming the model and field when the limits leave no bucket or the tokenizer is
      not the RM's.
  """
  # Imported here: the serving package (and its demo mode) runs without JAX; only a real
  # checkpoint needs the model stack.
  from rlhf_jax.algorithms import rm_scoring, run_setup  # pylint: disable=g-import-not-at-top
  where = f"model {spec.name!r} (kind='checkpoint', path={spec.path!r})"
  spec_file = rm_scoring.spec_path(spec.path)
  if not os.path.isdir(spec.path) or not spec_file.is_file():
    raise FileNotFoundError(f"{where}: no exported reward model there; expected the parameters "
                            f"folder written by train_reward_model and its spec {spec_file}")
  rm_spec = rm_scoring.load_spec(spec_file)
  buckets = rm_scoring.Buckets.from_dict(rm_spec["buckets"])
  batch_sizes = tuple(b for b in buckets.batch_sizes if b <= spec.max_batch_size)
  lengths = tuple(n for n in buckets.lengths if n <= spec.max_seq_len)
  for field, kept, values in (("max_batch_size", batch_sizes, buckets.batch_sizes),
                              ("max_seq_len", lengths, buckets.lengths)):
    if not kept:
      raise ValueError(f"{where}: {field}={getattr(spec, field)} is below the smallest of the "
                       f"reward model's buckets {values}")
  overrides = {"name": spec.name, "buckets": rm_scoring.Buckets(batch_sizes, lengths)}
  if spec.version:
    overrides["version"] = spec.version
  if spec.tokenizer_path:
    tokenizer = run_setup.load_tokenizer(spec.tokenizer_path)
    expected = rm_spec.get("tokenizer_id")
    if expected and tokenizer.id != expected:
      raise ValueError(f"{where}: tokenizer_path {spec.tokenizer_path!r} holds tokenizer "
                       f"{tokenizer.id!r}, but the reward model was trained with {expected!r}")
    overrides["tokenizer"] = tokenizer
  return rm_scoring.load_scorer_from_export(spec.path, **overrides)


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
