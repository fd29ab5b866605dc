"""Grouped-query causal self-attention with segment masking and an optional KV cache.

Masking rule (one place for training, packing, left padding and decoding): query i may attend to
key j iff slot(j) <= slot(i), segment(j) == segment(i) and segment(j) != 0. Segment 0 marks padding;
packed rows number their examples 1, 2, 3, ...
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models import kv_cache
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.layers import apply_rope, constrain, param_init, rope_sin_cos

_MASKED = -1e30  # finite, so fully masked (padding) rows give a uniform softmax, never NaN


def attention_mask(q_seg_BxQ: jax.Array, k_seg_BxC: jax.Array, q_slot_Q: jax.Array,
                   k_slot_C: jax.Array) -> jax.Array:
  """Boolean [B, Q, C] mask implementing the rule in the module docstring."""
  causal_QxC = k_slot_C[None, :] <= q_slot_Q[:, None]
  same_BxQxC = q_seg_BxQ[:, :, None] == k_seg_BxC[:, None, :]
  real_Bx1xC = (k_seg_BxC != 0)[:, None, :]
  return causal_QxC[None, :, :] & same_BxQxC & real_Bx1xC


class Attention(nn.Module):
  config: ModelConfig
  mesh: Any = None
  rules: Any = None

  @nn.compact
  def __call__(self, x_BxQxD: jax.Array, positions_BxQ: jax.Array, segment_ids_BxQ: jax.Array,
               layer_cache: Optional[tuple[jax.Array, jax.Array]] = None,
               cache_segment_ids_BxC: Optional[jax.Array] = None, cache_end: Optional[jax.Array] = None):
    cfg = self.config
    H, G, K = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    proj = lambda feats, names, name: nn.DenseGeneral(  # noqa: E731
        feats, axis=-1, use_bias=False, dtype=cfg.jnp_compute_dtype, param_dtype=cfg.jnp_param_dtype,
        kernel_init=param_init(cfg, names), name=name)
    q_BxQxHxK = proj((H, K), ("embed", "heads", "head_dim"), "query")(x_BxQxD)
    k_BxQxGxK = proj((G, K), ("embed", "kv_heads", "head_dim"), "key")(x_BxQxD)
    v_BxQxGxK = proj((G, K), ("embed", "kv_heads", "head_dim"), "value")(x_BxQxD)
    q_BxQxHxK = constrain(q_BxQxHxK, ("batch", "length", "act_heads", None), self.mesh, self.rules)

    sin, cos = rope_sin_cos(positions_BxQ, K, cfg.rope_theta)
    q_BxQxHxK = apply_rope(q_BxQxHxK, sin, cos)
    k_BxQxGxK = apply_rope(k_BxQxGxK, sin, cos)

    Q = x_BxQxD.shape[1]
    if layer_cache is None:
      keys_BxCxGxK, values_BxCxGxK, k_seg_BxC = k_BxQxGxK, v_BxQxGxK, segment_ids_BxQ
      q_slot_Q = jnp.arange(Q)
      k_slot_C = q_slot_Q
      new_cache = None
    else:
      keys_BxCxGxK = kv_cache.write(layer_cache[0], k_BxQxGxK, cache_end)
      values_BxCxGxK = kv_cache.write(layer_cache[1], v_BxQxGxK, cache_end)
      k_seg_BxC = cache_segment_ids_BxC  # already updated with this call's segments by the decoder
      q_slot_Q = cache_end + jnp.arange(Q)
      k_slot_C = jnp.arange(keys_BxCxGxK.shape[1])
      new_cache = (keys_BxCxGxK, values_BxCxGxK)

    mask_BxQxC = attention_mask(segment_ids_BxQ, k_seg_BxC, q_slot_Q, k_slot_C)
    B = keys_BxCxGxK.shape[0]
    q_BxQxGxRxK = q_BxQxHxK.reshape(B, Q, G, H // G, K)
    # Scores in float32: softmax of bfloat16 logits loses the small probabilities RL relies on.
    scores_BxGxRxQxC = jnp.einsum("bqgrk,bcgk->bgrqc", q_BxQxGxRxK, keys_BxCxGxK,
                                  preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(K))
    scores_BxGxRxQxC = jnp.where(mask_BxQxC[:, None, None, :, :], scores_BxGxRxQxC, _MASKED)
    probs = jax.nn.softmax(scores_BxGxRxQxC, axis=-1).astype(values_BxCxGxK.dtype)
    out_BxQxGxRxK = jnp.einsum("bgrqc,bcgk->bqgrk", probs, values_BxCxGxK)
    out_BxQxHxK = out_BxQxGxRxK.reshape(B, Q, H, K).astype(cfg.jnp_compute_dtype)
    out_BxQxD = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=False, dtype=cfg.jnp_compute_dtype,
                                param_dtype=cfg.jnp_param_dtype,
                                kernel_init=param_init(cfg, ("heads", "head_dim", "embed")),
                                name="out")(out_BxQxHxK)
    return out_BxQxD, new_cache
