"""Model configuration for the Llama-style decoder, with named presets.

Shapes follow ../shared/BENCHMARKS.md: `tiny` and `small` are the benchmark models; `test` is
sized so that a forward pass compiles in well under a second on one CPU core.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of the decoder. Every field is validated by `validate()`."""

  vocab_size: int = 4096  # V: rows of the embedding table (>= the tokenizer's vocabulary)
  d_model: int = 256  # D: residual stream width
  num_layers: int = 4  # number of decoder blocks
  num_heads: int = 4  # H: query heads
  num_kv_heads: int = 4  # G: key/value heads (grouped-query attention); must divide num_heads
  head_dim: int = 64  # K: width of one attention head
  mlp_dim: int = 768  # F: hidden width of the SwiGLU MLP
  max_len: int = 512  # longest sequence (prompt + response) the model is used with
  rope_theta: float = 10_000.0  # base of the rotary position embedding frequencies
  norm_eps: float = 1e-6  # RMSNorm epsilon
  tie_embeddings: bool = False  # share the embedding table with the output projection
  param_dtype: str = "float32"  # dtype parameters are stored in ("master weights")
  compute_dtype: str = "float32"  # dtype of matmuls/activations; "bfloat16" on GPU/TPU
  init_std: float = 0.02  # std of the normal initialiser of embeddings and projections
  remat: bool = False  # rematerialise each block in the backward pass (memory for compute)

  @property
  def jnp_param_dtype(self) -> Any:
    return _DTYPES[self.param_dtype]

  @property
  def jnp_compute_dtype(self) -> Any:
    return _DTYPES[self.compute_dtype]

  def validate(self) -> "ModelConfig":
    """Raises ValueError naming the offending field; returns self for chaining."""
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_dim", "max_len"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"model.num_heads ({self.num_heads}) must be divisible by model.num_kv_heads "
          f"({self.num_kv_heads}) for grouped-query attention")
    if self.head_dim % 2:
      raise ValueError(f"model.head_dim must be even for rotary embeddings, got {self.head_dim}")
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"model.{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}")
    return self

  def num_params(self, include_embeddings: bool = True) -> int:
    """Number of parameters of the causal LM (analytical; matches the initialised tree)."""
    d, f, v = self.d_model, self.mlp_dim, self.vocab_size
    attn = d * self.head_dim * (self.num_heads * 2 + self.num_kv_heads * 2)
    block = attn + 3 * d * f + 2 * d
    total = self.num_layers * block + d  # + final norm
    if include_embeddings:
      total += v * d * (1 if self.tie_embeddings else 2)
    return total

  def replace(self, **kwargs) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown model config fields: {sorted(unknown)}")
    return cls(**dict(d))


PRESETS: dict[str, ModelConfig] = {
    # Test-sized: grouped-query attention (4 heads, 2 kv heads) so GQA paths are always exercised.
    "test": ModelConfig(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, mlp_dim=128, max_len=256),
    "tiny": ModelConfig(vocab_size=4096, d_model=256, num_layers=4, num_heads=4, num_kv_heads=4,
                        head_dim=64, mlp_dim=768, max_len=512),
    "small": ModelConfig(vocab_size=32000, d_model=512, num_layers=8, num_heads=8, num_kv_heads=8,
                         head_dim=64, mlp_dim=1536, max_len=512),
}


def get_model_config(name: str, **overrides) -> ModelConfig:
  """A named preset with optional field overrides, validated."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides).validate()
