"""Building blocks of the Llama-style decoder: RMSNorm, rotary embeddings, SwiGLU MLP.

Every parameter is created through `nn.with_logical_partitioning`, so its logical axis names
(e.g. ("embed", "mlp")) travel with it and `rlhf_jax.sharding` maps them onto the mesh.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax.models.config import ModelConfig


def param_init(config: ModelConfig, names: tuple[str | None, ...], std: float | None = None):
  """Normal initialiser with logical axis names attached."""
  return nn.with_logical_partitioning(nn.initializers.normal(stddev=config.init_std if std is None else std),
                                      names)


def constrain(x: jax.Array, names: tuple[str, ...], mesh: Any, rules: Any) -> jax.Array:
  """Activation sharding constraint; a no-op when the model is used without a mesh."""
  if mesh is None or rules is None:
    return x
  return nn.with_logical_constraint(x, names, rules=rules, mesh=mesh)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm (Zhang & Sennrich 2019), computed in float32."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    cfg = self.config
    scale_D = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                         (x_BxLxD.shape[-1],), cfg.jnp_param_dtype)
    x = x_BxLxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + cfg.norm_eps)
    scale = scale_D.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
    return (x * scale).astype(cfg.jnp_compute_dtype)


def rope_sin_cos(positions_BxL: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """Rotary angles (Su et al. 2021, RoFormer) for integer positions; float32 [B, L, K/2] each."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles_BxLxK2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq[None, None, :]
  return jnp.sin(angles_BxLxK2), jnp.cos(angles_BxLxK2)


def apply_rope(x_BxLxHxK: jax.Array, sin_BxLxK2: jax.Array, cos_BxLxK2: jax.Array) -> jax.Array:
  """Rotates the two halves of each head (the "rotate_half" layout used by Llama checkpoints)."""
  x = x_BxLxHxK.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  sin, cos = sin_BxLxK2[:, :, None, :], cos_BxLxK2[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxHxK.dtype)


class SwiGLU(nn.Module):
  """Gated MLP: W_o (silu(x W_gate) * (x W_up)) (Shazeer 2020)."""
  config: ModelConfig
  mesh: Any = None
  rules: Any = None

  @nn.compact
  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    cfg = self.config
    dense = lambda feats, names, name: nn.DenseGeneral(  # noqa: E731
        feats, use_bias=False, dtype=cfg.jnp_compute_dtype, param_dtype=cfg.jnp_param_dtype,
        kernel_init=param_init(cfg, names), name=name)
    gate_BxLxF = dense(cfg.mlp_dim, ("embed", "mlp"), "wi_gate")(x_BxLxD)
    up_BxLxF = dense(cfg.mlp_dim, ("embed", "mlp"), "wi_up")(x_BxLxD)
    h_BxLxF = constrain(nn.silu(gate_BxLxF) * up_BxLxF, ("batch", "length", "act_mlp"), self.mesh, self.rules)
    return dense(cfg.d_model, ("mlp", "embed"), "wo")(h_BxLxF)
