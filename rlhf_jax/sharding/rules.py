"""Logical-axis rules: how named parameter/activation dimensions map onto mesh axes.

Parameters and activations are annotated with logical names (e.g. `("embed", "mlp")`); this short
table is the only place that decides where each name lives on the mesh. Override it from a config
as a list of `[logical_name, mesh_axis_or_axes_or_null]` pairs.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

LogicalRules = tuple[tuple[str, Any], ...]

DEFAULT_RULES: LogicalRules = (
    # Parameters.
    ("vocab", "tensor"),  # embedding rows / output projection columns
    ("embed", "fsdp"),  # the model width D of weights: sharded by fully-sharded data parallelism
    ("heads", "tensor"),  # query heads
    ("kv_heads", "tensor"),  # key/value heads (grouped-query attention)
    ("head_dim", None),
    ("mlp", "tensor"),  # SwiGLU hidden width F
    ("norm", None),  # RMSNorm scales are tiny: replicate
    ("scalar", None),  # output width 1 of reward/value heads
    ("members", None),  # ensemble members (vmapped reward models)
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_length", None),
)


def rules_from_config(pairs: Iterable[Sequence[Any]] | None) -> LogicalRules:
  """Turns config pairs (lists from JSON/ConfigDict) into the tuple form flax expects."""
  if pairs is None:
    return DEFAULT_RULES
  out = []
  for i, pair in enumerate(pairs):
    if len(pair) != 2 or not isinstance(pair[0], str):
      raise ValueError(f"sharding.rules[{i}] must be [logical_name, mesh_axes], got {pair!r}")
    axes = pair[1]
    if isinstance(axes, list):
      axes = tuple(axes)
    out.append((pair[0], axes))
  return tuple(out)
