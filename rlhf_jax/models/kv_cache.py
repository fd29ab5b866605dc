"""A functional key/value cache for autoregressive decoding.

The cache is an explicit input and output of the model (never a hidden mutable collection), so
sampling loops stay pure. Slot `c` of the cache holds the keys/values of the token written at
buffer position `c`; `segment_ids_BxC` marks which slots hold real tokens (0 = empty or padding),
and `end` is the next slot to write. Prompts are left-padded to a common length, so every row
writes the same slot at each step and causality is simply `key_slot <= query_slot`.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig


@flax.struct.dataclass
class KVCache:
  keys: tuple[jax.Array, ...]  # per layer [B, C, G, K]
  values: tuple[jax.Array, ...]  # per layer [B, C, G, K]
  segment_ids_BxC: jax.Array  # int32, 0 where the slot is empty or padding
  end: jax.Array  # int32 scalar: next slot to write

  @property
  def length(self) -> int:
    return self.segment_ids_BxC.shape[1]


def init_cache(config: ModelConfig, batch_size: int, length: int, dtype: Any = None) -> KVCache:
  """An empty cache of `length` slots (prompt plus new tokens)."""
  if length > config.max_len:
    raise ValueError(f"cache length {length} exceeds model.max_len {config.max_len}")
  dtype = dtype or config.jnp_compute_dtype
  shape = (batch_size, length, config.num_kv_heads, config.head_dim)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  return KVCache(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
                 segment_ids_BxC=jnp.zeros((batch_size, length), jnp.int32), end=jnp.zeros((), jnp.int32))


def write(cache_BxCxGxK: jax.Array, new_BxQxGxK: jax.Array, start: jax.Array) -> jax.Array:
  """Writes new entries at slots [start, start + Q)."""
  return jax.lax.dynamic_update_slice_in_dim(cache_BxCxGxK, new_BxQxGxK.astype(cache_BxCxGxK.dtype), start, axis=1)
