"""The workloads of ../shared/BENCHMARKS.md as functions returning JSON-ready dicts."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax import models, perf, sampling


def measure_peaks() -> dict:
  return {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
          "peak_matmul_flops": perf.peak_matmul_flops(), "copy_bandwidth_bytes_per_s": perf.copy_bandwidth()}


def _compute_dtype() -> str:
  return "float32" if jax.devices()[0].platform == "cpu" else "bfloat16"


def w2_sampling(model_name: str, peaks: dict, repeats: int) -> dict:
  """W2: 8 prompts of 64 tokens, exactly 64 new tokens, temperature 1.0, no early EOS stop, KV cache."""
  B, P, S = 8, 64, 64
  cfg = models.get_model_config(model_name, compute_dtype=_compute_dtype())
  lm = models.CausalLM(cfg)
  params = jax.jit(lambda k: nn.unbox(models.init_params(lm, k)))(jax.random.key(0))
  scfg = sampling.SamplingConfig(max_new_tokens=S, temperature=1.0, stop_at_eos=False)
  sampler = sampling.Sampler(lm, eos_id=3, pad_id=0)
  prompts = jax.random.randint(jax.random.key(1), (B, P), 4, cfg.vocab_size).tolist()
  keys = iter(jax.random.split(jax.random.key(2), repeats + 2))
  t = perf.time_calls(lambda: sampler.generate(params, prompts, next(keys), scfg, exact_output_length=True).tokens_BxS,
                      repeats)
  tokens_per_s = B * S / t["median_s"]
  # Memory-bandwidth bound of decoding: each step reads every parameter and the KV cache so far.
  cache_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.jnp_compute_dtype).itemsize
  mean_context = P + S / 2
  bytes_per_step = perf.param_bytes(params) + B * mean_context * cache_bytes_per_token
  step_s = t["median_s"] / S
  return {"workload": "w2_sampling", "model": model_name, "batch": B, "prompt_len": P, "new_tokens": S,
          "compile_s": t["first_call_s"] - t["median_s"], "median_s": t["median_s"],
          "generated_tokens_per_s": tokens_per_s, "decode_step_ms": 1e3 * step_s,
          "bytes_per_decode_step": bytes_per_step,
          "memory_bandwidth_fraction": bytes_per_step / step_s / peaks["copy_bandwidth_bytes_per_s"],
          "model_flops_utilisation": B * perf.forward_flops_per_token(cfg, int(mean_context)) / step_s
                                     / peaks["peak_matmul_flops"],
          "peak_rss_mib": perf.peak_rss_mib()}


WORKLOADS: dict[str, Callable[[str, dict, int], dict]] = {"w2": w2_sampling}
