"""Scalar-head models on the decoder trunk: reward models and value functions.

The head is a Dense(D -> 1) initialised N(0, 1/sqrt(D + 1)) with bias 0 (Ziegler et al. 2019;
PPO_DETAILS item 6). Rewards are read at a chosen position per row, normally the last real token.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig
from rlhf_jax.models.transformer import Decoder


def gather_at(x_BxL: jax.Array, index_B: jax.Array) -> jax.Array:
  """x[b, index[b]] for each row."""
  return jnp.take_along_axis(x_BxL, index_B[:, None].astype(jnp.int32), axis=1)[:, 0]


def last_real_index(segment_ids_BxL: jax.Array) -> jax.Array:
  """Index of the last non-padding token of each row (right or left padding)."""
  L = segment_ids_BxL.shape[1]
  idx_BxL = jnp.where(segment_ids_BxL != 0, jnp.arange(L)[None, :], -1)
  return jnp.max(idx_BxL, axis=1)


class ScalarModel(nn.Module):
  """Decoder trunk + scalar head. Returns per-token values [B, L] (float32) and, when `read_index_B` is
  given, the value at that index per row [B] (the reward of a reward model)."""
  config: ModelConfig
  mesh: Any = None
  rules: Any = None

  @nn.compact
  def __call__(self, tokens_BxL: jax.Array, positions_BxL: Optional[jax.Array] = None,
               segment_ids_BxL: Optional[jax.Array] = None, read_index_B: Optional[jax.Array] = None):
    cfg = self.config
    hidden_BxLxD, _ = Decoder(cfg, self.mesh, self.rules, name="decoder")(tokens_BxL, positions_BxL,
                                                                           segment_ids_BxL)
    head = nn.DenseGeneral(
        1, use_bias=True, dtype=jnp.float32, param_dtype=cfg.jnp_param_dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0 / (cfg.d_model + 1) ** 0.5),
                                                 ("embed", "scalar")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("scalar",)), name="head")
    values_BxL = head(hidden_BxLxD.astype(jnp.float32))[..., 0]
    score_B = None if read_index_B is None else gather_at(values_BxL, read_index_B)
    return values_BxL, score_B


def scalar_params_from_lm(lm_params: Any, scalar_params: Any) -> Any:
  """Copies the decoder trunk of a CausalLM (e.g. an SFT checkpoint) into a ScalarModel's params."""
  out = dict(scalar_params)
  src, dst = lm_params["decoder"], scalar_params["decoder"]
  if jax.tree.structure(src) != jax.tree.structure(dst):
    raise ValueError("the language model's decoder and the scalar model's decoder have different structures; "
                     "were they built from the same model config?")
  out["decoder"] = jax.tree.map(lambda s, d: s.astype(d.dtype), src, dst)
  return out
