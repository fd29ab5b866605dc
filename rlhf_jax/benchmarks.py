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


def _single_device_train_state(model: nn.Module, compute_dtype: str, **optimizer_overrides):
  """(state, state shardings, optimiser, mesh) of `model` on one device with AdamW defaults."""
  import functools  # pylint: disable=g-import-not-at-top
  from rlhf_jax import sharding  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms import optimizer as optimizer_lib, train_state  # pylint: disable=g-import-not-at-top
  mesh = sharding.single_device_mesh()
  opt_cfg = optimizer_lib.optimizer_config_defaults()
  opt_cfg.update(optimizer_overrides)
  opt_cfg.compute_dtype = compute_dtype
  tx, _ = optimizer_lib.make_optimizer(opt_cfg)
  state, shardings = train_state.create_train_state(functools.partial(models.init_params, model), tx, mesh,
                                                    sharding.DEFAULT_RULES, jax.random.key(0))
  return state, shardings, tx, mesh


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


def w5_sft_step(model_name: str, peaks: dict, repeats: int) -> dict:
  """W5: SFT step on 8 sequences x 256 tokens, next-token cross-entropy, AdamW."""
  import functools  # pylint: disable=g-import-not-at-top
  from rlhf_jax import sharding  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms import optimizer as optimizer_lib, sft, train_state  # pylint: disable=g-import-not-at-top
  B, L = 8, 256
  cfg = models.get_model_config(model_name, compute_dtype=_compute_dtype())
  lm = models.CausalLM(cfg)
  state, shardings, tx, mesh = _single_device_train_state(lm, cfg.compute_dtype)
  tokens = jax.random.randint(jax.random.key(1), (B, L), 4, cfg.vocab_size)
  batch = {"tokens": tokens, "positions": jnp.broadcast_to(jnp.arange(L), (B, L)),
           "segment_ids": jnp.ones((B, L), jnp.int32), "loss_mask": jnp.ones((B, L), jnp.int32)}
  batch_sh = {k: sharding.batch_sharding(mesh, 2) for k in batch}
  step = train_state.jit_train_step(
      train_state.make_train_step(functools.partial(sft.sft_loss_fn, model=lm), tx,
                                  compute_dtype=optimizer_lib.compute_dtype_of(cfg.compute_dtype)),
      shardings, batch_sh, mesh)
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch, jax.random.key(0))
    return metrics["loss/total"]

  t = perf.time_calls(run, repeats)
  flops = perf.train_flops_per_token(cfg, L) * B * L
  return {"workload": "w5_sft_step", "model": model_name, "batch": B, "seq_len": L,
          "compile_s": t["first_call_s"] - t["median_s"], "s_per_step": t["median_s"],
          "tokens_per_s": B * L / t["median_s"], "model_flops_per_step": flops,
          "model_flops_utilisation": flops / t["median_s"] / peaks["peak_matmul_flops"],
          "peak_rss_mib": perf.peak_rss_mib()}


def w1_dpo_step(model_name: str, peaks: dict, repeats: int) -> dict:
  """W1: DPO step, 8 pairs of prompt 64 + response 64 tokens, in-step frozen reference, AdamW 1e-5, beta 0.1."""
  import functools  # pylint: disable=g-import-not-at-top
  from rlhf_jax import sharding  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms import dpo, optimizer as optimizer_lib, train_state  # pylint: disable=g-import-not-at-top
  B, P, S = 8, 64, 64
  L = P + S
  cfg = models.get_model_config(model_name, compute_dtype=_compute_dtype())
  lm = models.CausalLM(cfg)
  state, shardings, tx, mesh = _single_device_train_state(lm, cfg.compute_dtype, lr=1e-5, warmup_steps=0,
                                                          decay="constant")
  ref_params, ref_shardings = sharding.init_sharded(functools.partial(models.init_params, lm), mesh,
                                                    sharding.DEFAULT_RULES, jax.random.key(1))
  rows = 2 * B  # [chosen; rejected], one forward pass
  batch = {"tokens_2BxL": jax.random.randint(jax.random.key(2), (rows, L), 4, cfg.vocab_size),
           "positions_2BxL": jnp.broadcast_to(jnp.arange(L), (rows, L)),
           "segment_ids_2BxL": jnp.ones((rows, L), jnp.int32),
           "loss_mask_2BxL": jnp.broadcast_to((jnp.arange(L) >= P).astype(jnp.int32), (rows, L)),
           "weight_B": jnp.ones((B,), jnp.float32)}
  step = dpo.jit_dpo_step(
      dpo.make_dpo_step(dpo.make_lm_logp_fn(lm), "dpo", {"beta": 0.1}, tx,
                        compute_dtype=optimizer_lib.compute_dtype_of(cfg.compute_dtype)),
      shardings, train_state.batch_shardings_for(batch, mesh), mesh, ref_shardings)
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch, jax.random.key(0), ref_params)
    return metrics["loss/total"]

  t = perf.time_calls(run, repeats)
  policy_flops = perf.train_flops_per_token(cfg, L) * rows * L  # forward + backward of the policy
  reference_flops = policy_flops / 3  # forward only (2N of 6N, attention likewise)
  flops = policy_flops + reference_flops
  return {"workload": "w1_dpo_step", "model": model_name, "pairs": B, "prompt_len": P, "response_len": S,
          "compute_dtype": cfg.compute_dtype, "compile_s": t["first_call_s"] - t["median_s"],
          "s_per_step": t["median_s"], "pairs_per_s": B / t["median_s"], "tokens_per_s": rows * L / t["median_s"],
          "model_flops_per_step": flops, "model_flops_utilisation": flops / t["median_s"] / peaks["peak_matmul_flops"],
          "peak_rss_mib": perf.peak_rss_mib()}


def w3_reward_model_step(model_name: str, peaks: dict, repeats: int) -> dict:
  """W3: reward-model step, Bradley-Terry loss on 8 pairs of 128 tokens (one forward over the 16
  [chosen; rejected] rows), scalar head read at the last real token, AdamW."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms import optimizer as optimizer_lib, reward_model  # pylint: disable=g-import-not-at-top
  B, L = 8, 128
  cfg = models.get_model_config(model_name, compute_dtype=_compute_dtype())
  model = models.ScalarModel(cfg)
  state, shardings, tx, mesh = _single_device_train_state(model, cfg.compute_dtype)
  loss_cfg = ml_collections.ConfigDict(dict(label_smoothing=0.0, center_coef=0.0, use_margin=False,
                                            use_weights=True, use_ties=True))
  batch = reward_model.RewardBatch(
      tokens_Bx2xL=jax.random.randint(jax.random.key(1), (B, 2, L), 4, cfg.vocab_size),
      positions_Bx2xL=jnp.broadcast_to(jnp.arange(L), (B, 2, L)),
      segment_ids_Bx2xL=jnp.ones((B, 2, L), jnp.int32),
      last_index_Bx2=jnp.full((B, 2), L - 1, jnp.int32), weight_B=jnp.ones((B,), jnp.float32),
      margin_B=jnp.zeros((B,), jnp.float32), tie_B=jnp.zeros((B,), bool))
  step = reward_model.make_step(
      reward_model.make_loss_fn(reward_model.make_score_fn(model), loss_cfg), tx, state_shardings=shardings,
      batch_shardings=reward_model.batch_shardings(mesh), mesh=mesh,
      compute_dtype=optimizer_lib.compute_dtype_of(cfg.compute_dtype))
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], batch, jax.random.key(0))
    return metrics["loss/total"]

  t = perf.time_calls(run, repeats)
  # The scalar head replaces the D x V output projection that train_flops_per_token counts.
  per_token = perf.train_flops_per_token(cfg, L) - 6 * cfg.d_model * cfg.vocab_size + 6 * cfg.d_model
  flops = per_token * 2 * B * L
  return {"workload": "w3_reward_model_step", "model": model_name, "pairs": B, "seq_len": L,
          "compile_s": t["first_call_s"] - t["median_s"], "s_per_step": t["median_s"],
          "pairs_per_s": B / t["median_s"], "model_flops_per_step": flops,
          "model_flops_utilisation": flops / t["median_s"] / peaks["peak_matmul_flops"],
          "peak_rss_mib": perf.peak_rss_mib()}


def w4_ppo_iteration(model_name: str, peaks: dict, repeats: int) -> dict:
  """W4: one PPO iteration: 8 prompts x 64 tokens, exactly 64 new tokens; reward-model score, reference
  log-probs, value model, GAE (gamma 1, lambda 0.95); 1 PPO epoch of 2 minibatches of 4."""
  import optax  # pylint: disable=g-import-not-at-top
  from rlhf_jax import sharding  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms import ppo  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms.ppo import trainer as ppo_trainer  # pylint: disable=g-import-not-at-top
  B, P, S = 8, 64, 64
  cfg = models.get_model_config(model_name, compute_dtype=_compute_dtype())
  mesh = sharding.single_device_mesh()
  lm, vm = models.CausalLM(cfg), models.ScalarModel(cfg)
  settings = ppo_trainer.PPOSettings(
      sampling=sampling.SamplingConfig(max_new_tokens=S, temperature=1.0, stop_at_eos=False),
      reward=ppo.RewardConfig(), update=ppo.UpdateConfig(num_epochs=1, num_minibatches=2),
      num_prompts=B, max_prompt_len=P, eos_id=3, pad_id=0, advantage="gae", gamma=1.0, lam=0.95)
  rm_params = ppo.state.unboxed_init(vm, jax.random.key(3))
  trainer = ppo_trainer.PPOTrainer(settings, policy_model=lm, value_model=vm,
                                   reward_source=ppo.reward_model_source(vm, rm_params), policy_tx=optax.adam(1e-6),
                                   value_tx=optax.adam(1e-6), mesh=mesh)
  state = trainer.init_state(ppo.state.unboxed_init(lm, jax.random.key(0)), jax.random.key(1),
                             value_init="reward_model", reward_params=rm_params)
  ref = ppo.frozen_copy(state.policy.params, trainer.policy_shardings.params)
  prompt_ids = jax.random.randint(jax.random.key(2), (B, P), 4, cfg.vocab_size).tolist()
  prompts = ppo_trainer.PromptSet(token_ids=prompt_ids, texts=[""] * B)
  holder = {"state": state, "timings": []}

  def run():
    holder["state"], metrics, _ = trainer.iteration(holder["state"], ref, prompts, jax.random.key(4))
    holder["timings"].append(metrics)
    return holder["state"].iteration

  t = perf.time_calls(run, repeats)
  timed = holder["timings"][1:]
  median = lambda k: sorted(m[k] for m in timed)[len(timed) // 2]  # noqa: E731
  L = P + S
  unembed = cfg.d_model * cfg.vocab_size  # scalar models (value, reward) have a D x 1 head instead
  lm_fwd = perf.forward_flops_per_token(cfg, L) * B * L  # one forward pass over [prompt; response]
  scalar_fwd = (perf.forward_flops_per_token(cfg, L) - 2 * unembed) * B * L
  lm_train = perf.train_flops_per_token(cfg, L) * B * L
  scalar_train = (perf.train_flops_per_token(cfg, L) - 6 * unembed) * B * L
  gen = B * sum(perf.forward_flops_per_token(cfg, P + s) for s in range(S)) + perf.forward_flops_per_token(cfg, P) * B * P
  # generation + old/reference log-probs + value and reward forwards + one epoch of policy and critic steps
  flops = gen + 2 * lm_fwd + 2 * scalar_fwd + lm_train + scalar_train
  return {"workload": "w4_ppo_iteration", "model": model_name, "prompts": B, "prompt_len": P, "new_tokens": S,
          "compute_dtype": cfg.compute_dtype, "compile_s": t["first_call_s"] - t["median_s"],
          "s_per_iteration": t["median_s"], "generation_s": median("time/generation_s"),
          "generation_share": median("time/generation_share"), "forward_s": median("time/forward_s"),
          "reward_s": median("time/reward_s"), "advantages_s": median("time/advantages_s"),
          "update_s": median("time/update_s"), "generated_tokens_per_s": B * S / t["median_s"],
          "model_flops_per_iteration": flops,
          "model_flops_utilisation": flops / t["median_s"] / peaks["peak_matmul_flops"],
          "peak_rss_mib": perf.peak_rss_mib()}


WORKLOADS: dict[str, Callable[[str, dict, int], dict]] = {"w1": w1_dpo_step, "w2": w2_sampling, "w3": w3_reward_model_step,
                                                          "w4": w4_ppo_iteration, "w5": w5_sft_step}
