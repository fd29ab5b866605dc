"""Llama-style decoder, scalar heads, KV cache and model presets."""
from rlhf_jax.models.config import PRESETS, ModelConfig, get_model_config
from rlhf_jax.models.heads import ScalarModel, gather_at, last_real_index, scalar_params_from_lm
from rlhf_jax.models.kv_cache import KVCache, init_cache
from rlhf_jax.models.transformer import (CausalLM, Decoder, ModelOutput, init_params, positions_from_segments,
                                         unembedding_matrix)
