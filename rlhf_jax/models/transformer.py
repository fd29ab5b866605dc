"""Llama-style decoder-only transformer (Flax Linen): pre-norm blocks of GQA attention and SwiGLU.

Inputs are explicit: token ids, position ids and segment ids (0 = padding; 1, 2, ... for the
examples of a packed row). Left padding, packing and decoding all go through the same mask rule
(see `attention.py`). Shapes use the letter table in README.md (B batch, L length, D width, ...).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models.attention import Attention
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.kv_cache import KVCache
from rlhf_jax.models.layers import RMSNorm, SwiGLU, constrain, param_init


class ModelOutput(NamedTuple):
  logits: Optional[jax.Array]  # [B, L, V] in the compute dtype (None when not requested)
  hidden: jax.Array  # [B, L, D] final (normed) hidden states
  cache: Optional[KVCache]  # updated cache when one was passed in


def positions_from_segments(segment_ids_BxL: jax.Array) -> jax.Array:
  """Positions restarting at 0 at the start of every segment (packing and left padding alike)."""
  L = segment_ids_BxL.shape[1]
  idx_L = jnp.arange(L, dtype=jnp.int32)
  prev_BxL = jnp.pad(segment_ids_BxL[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  start_BxL = segment_ids_BxL != prev_BxL
  start_idx_BxL = jax.lax.cummax(jnp.where(start_BxL, idx_L[None, :], 0), axis=1)
  return jnp.where(segment_ids_BxL != 0, idx_L[None, :] - start_idx_BxL, 0)


class Block(nn.Module):
  config: ModelConfig
  mesh: Any = None
  rules: Any = None

  @nn.compact
  def __call__(self, x_BxLxD, positions_BxL, segment_ids_BxL, layer_cache=None, cache_segment_ids_BxC=None,
               cache_end=None):
    cfg = self.config
    h, new_cache = Attention(cfg, self.mesh, self.rules, name="attn")(
        RMSNorm(cfg, name="attn_norm")(x_BxLxD), positions_BxL, segment_ids_BxL, layer_cache,
        cache_segment_ids_BxC, cache_end)
    x_BxLxD = x_BxLxD + h
    x_BxLxD = x_BxLxD + SwiGLU(cfg, self.mesh, self.rules, name="mlp")(RMSNorm(cfg, name="mlp_norm")(x_BxLxD))
    return constrain(x_BxLxD, ("batch", "length", "act_embed"), self.mesh, self.rules), new_cache


class Decoder(nn.Module):
  """Embedding, N blocks and the final norm: the trunk shared by policy, reward and value models."""
  config: ModelConfig
  mesh: Any = None
  rules: Any = None

  def setup(self):
    cfg = self.config
    self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.jnp_compute_dtype,
                          param_dtype=cfg.jnp_param_dtype, embedding_init=param_init(cfg, ("vocab", "embed")),
                          name="embed")
    block = nn.remat(Block, static_argnums=()) if cfg.remat else Block
    self.layers = [block(cfg, self.mesh, self.rules, name=f"layer_{i}") for i in range(cfg.num_layers)]
    self.final_norm = RMSNorm(cfg, name="final_norm")

  def __call__(self, tokens_BxL: jax.Array, positions_BxL: Optional[jax.Array] = None,
               segment_ids_BxL: Optional[jax.Array] = None, cache: Optional[KVCache] = None):
    if segment_ids_BxL is None:
      segment_ids_BxL = jnp.ones(tokens_BxL.shape, jnp.int32)
    if positions_BxL is None:
      if cache is not None:
        raise ValueError("decoding with a KV cache needs explicit positions_BxL")
      positions_BxL = positions_from_segments(segment_ids_BxL)
    x_BxLxD = self.embed(tokens_BxL)
    x_BxLxD = constrain(x_BxLxD, ("batch", "length", "act_embed"), self.mesh, self.rules)
    cache_seg_BxC = None
    if cache is not None:
      cache_seg_BxC = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids_BxC, segment_ids_BxL.astype(jnp.int32),
                                                          cache.end, axis=1)
    new_keys, new_values = [], []
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
      x_BxLxD, new_layer_cache = layer(x_BxLxD, positions_BxL, segment_ids_BxL, layer_cache, cache_seg_BxC,
                                       None if cache is None else cache.end)
      if cache is not None:
        new_keys.append(new_layer_cache[0])
        new_values.append(new_layer_cache[1])
    hidden_BxLxD = self.final_norm(x_BxLxD)
    new_cache = None
    if cache is not None:
      new_cache = KVCache(keys=tuple(new_keys), values=tuple(new_values), segment_ids_BxC=cache_seg_BxC,
                          end=cache.end + tokens_BxL.shape[1])
    return hidden_BxLxD, new_cache

  def attend(self, hidden_BxLxD: jax.Array) -> jax.Array:
    """Tied output projection: hidden @ embedding^T."""
    return self.embed.attend(hidden_BxLxD)


class CausalLM(nn.Module):
  """Decoder plus the output projection to vocabulary logits (policy and reference models)."""
  config: ModelConfig
  mesh: Any = None
  rules: Any = None

  def setup(self):
    cfg = self.config
    self.decoder = Decoder(cfg, self.mesh, self.rules, name="decoder")
    if not cfg.tie_embeddings:
      self.lm_head = nn.DenseGeneral(cfg.vocab_size, use_bias=False, dtype=cfg.jnp_compute_dtype,
                                     param_dtype=cfg.jnp_param_dtype,
                                     kernel_init=param_init(cfg, ("embed", "vocab")), name="lm_head")

  def __call__(self, tokens_BxL: jax.Array, positions_BxL: Optional[jax.Array] = None,
               segment_ids_BxL: Optional[jax.Array] = None, cache: Optional[KVCache] = None,
               return_logits: bool = True) -> ModelOutput:
    hidden_BxLxD, new_cache = self.decoder(tokens_BxL, positions_BxL, segment_ids_BxL, cache)
    logits = None
    if return_logits:
      logits = self.decoder.attend(hidden_BxLxD) if self.config.tie_embeddings else self.lm_head(hidden_BxLxD)
      logits = constrain(logits, ("batch", "length", "act_vocab"), self.mesh, self.rules)
    return ModelOutput(logits=logits, hidden=hidden_BxLxD, cache=new_cache)


def unembedding_matrix(params: Any, config: ModelConfig) -> jax.Array:
  """The [D, V] output projection of a CausalLM's params (for vocabulary-chunked log-probs)."""
  if config.tie_embeddings:
    return params["decoder"]["embed"]["embedding"].T
  return params["lm_head"]["kernel"]


def init_params(model: nn.Module, key: jax.Array, seq_len: int = 8, batch: int = 1) -> Any:
  """Boxed (logically partitioned) parameters; use `rlhf_jax.sharding.init_sharded` for sharded init."""
  tokens = jnp.zeros((batch, seq_len), jnp.int32)
  return model.init(key, tokens)["params"]
