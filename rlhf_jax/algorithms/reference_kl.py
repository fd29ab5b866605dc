"""KL (Kullback-Leibler) divergence of a policy from its reference, estimated on policy samples.

An evaluation for any trained policy (DPO = Direct Preference Optimization, PPO, best-of-N):
sample responses y ~ pi(. | x) to held-out prompts x at temperature 1, score them under the policy
and the frozen reference by teacher forcing, and estimate the sequence-level

  KL(pi || pi_ref)(x) = E_{y ~ pi}[ sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t) ]

with three estimators whose expectations all equal it (per-token estimators from `ops.kl`,
summed over the response; k3 and the exact per-position KL are unbiased for the sequence KL
because each position's term is unbiased for that position's conditional KL given the prefix):

  kl/k1     mean_b sum_t (logp_t - ref_logp_t)                    unbiased, high variance
  kl/k3     mean_b sum_t (exp(r_t) - 1 - r_t), r = ref_logp - logp unbiased, >= 0
  kl/full   mean_b sum_t KL(pi(. | prefix_t) || pi_ref(. | prefix_t)) over the whole vocabulary
            (Rao-Blackwellised: the lowest variance; costs the full logits of both models)

plus kl/k1_per_token (the k1 total over all response tokens / their number) and
kl/response_length. The response mask includes the EOS token. Sampling must use temperature 1,
no top-k and no top-p, otherwise the samples do not come from pi and the numbers estimate
something else; `validate_sampling` enforces this.

Shape letters: B rows (prompts x samples), P prompt length, S sampled length, L = P + S, V vocab.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlhf_jax import sampling
from rlhf_jax.ops import kl as kl_lib
from rlhf_jax.ops import logprobs as logprobs_lib
from rlhf_jax.ops import masked

PyTree = Any


class KLSample(NamedTuple):
  """Policy samples with both models' per-token log-probs and the KL metrics."""

  samples: sampling.SampleOutput
  logp_BxS: jax.Array  # policy log-probs of the sampled tokens (teacher-forced, temperature 1)
  ref_logp_BxS: jax.Array  # reference log-probs of the same tokens
  kl_B: dict[str, jax.Array]  # per-sequence estimates: "k1", "k3", "full" (see `sequence_kl`)
  metrics: dict[str, jax.Array]


def validate_sampling(cfg: sampling.SamplingConfig) -> sampling.SamplingConfig:
  """Raises ValueError unless `cfg` samples from the policy itself (temperature 1, no filters)."""
  cfg.validate()
  if cfg.temperature != 1.0 or cfg.top_k != 0 or cfg.top_p != 1.0:
    raise ValueError(f"the KL-to-reference estimate needs samples from the policy itself: "
                     f"temperature 1, top_k 0, top_p 1; got temperature={cfg.temperature}, "
                     f"top_k={cfg.top_k}, top_p={cfg.top_p}")
  return cfg


def _rows(prompt_tokens_BxP, prompt_mask_BxP, tokens_BxS, mask_BxS):
  """[left-padded prompt | right-padded response] rows with segment ids, positions, targets."""
  tokens_BxL = jnp.concatenate([prompt_tokens_BxP, tokens_BxS], axis=1)
  segment_ids_BxL = jnp.concatenate([prompt_mask_BxP, mask_BxS], axis=1).astype(jnp.int32)
  positions_BxL = (jnp.cumsum(segment_ids_BxL, axis=1) - segment_ids_BxL) * segment_ids_BxL
  target_mask_BxL = jnp.concatenate(
      [jnp.zeros_like(prompt_mask_BxP), mask_BxS], axis=1).astype(jnp.int32)
  return tokens_BxL, positions_BxL, segment_ids_BxL, target_mask_BxL


def response_logits_and_logprobs(params: PyTree, prompt_tokens_BxP: jax.Array,
                                 prompt_mask_BxP: jax.Array, tokens_BxS: jax.Array,
                                 mask_BxS: jax.Array, *, model: nn.Module
                                 ) -> tuple[jax.Array, jax.Array]:
  """Teacher-forced (logits_BxSxV, logp_BxS) of the response tokens; logp is 0 where mask is 0.

  logits[:, s] is the next-token distribution that produced tokens[:, s] (temperature 1).
  """
  tokens, positions, segment_ids, target_mask = _rows(prompt_tokens_BxP, prompt_mask_BxP,
                                                      tokens_BxS, mask_BxS)
  logits_BxLxV = model.apply({"params": params}, tokens, positions, segment_ids).logits
  logits, targets, mask = logprobs_lib.shift_for_next_token(logits_BxLxV, tokens, target_mask)
  logp = logprobs_lib.token_logprobs(logits, targets, temperature=1.0)
  first = prompt_tokens_BxP.shape[1] - 1  # shifted index of the first response token
  logp_BxS = jnp.where(mask[:, first:].astype(bool), logp[:, first:], 0.0)
  return logits[:, first:].astype(jnp.float32), logp_BxS


def sequence_kl(logp_BxS: jax.Array, ref_logp_BxS: jax.Array, mask_BxS: jax.Array,
                full_kl_BxS: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-sequence KL estimates {"k1": [B], "k3": [B], "full": [B] (with full_kl_BxS)}."""
  mask = mask_BxS.astype(bool)
  out = {"k1": masked.masked_sum(kl_lib.kl_k1(logp_BxS, ref_logp_BxS), mask, axis=1),
         "k3": masked.masked_sum(kl_lib.kl_k3(logp_BxS, ref_logp_BxS), mask, axis=1)}
  if full_kl_BxS is not None:
    out["full"] = masked.masked_sum(full_kl_BxS, mask, axis=1)
  return out


def kl_metrics(kl_B: dict[str, jax.Array], mask_BxS: jax.Array) -> dict[str, jax.Array]:
  """The module docstring's metrics (means over the B sequences) from `sequence_kl`."""
  num_tokens = jnp.sum(mask_BxS.astype(jnp.float32))
  out = {f"kl/{name}": jnp.mean(value_B) for name, value_B in kl_B.items()}
  out["kl/k1_per_token"] = jnp.sum(kl_B["k1"]) / jnp.maximum(num_tokens, 1.0)
  out["kl/response_length"] = num_tokens / mask_BxS.shape[0]
  return out


def sample_kl_to_reference(policy_params: PyTree, ref_params: PyTree,
                           prompt_tokens_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                           key: jax.Array, *, model: nn.Module, cfg: sampling.SamplingConfig,
                           eos_id: int, pad_id: int) -> KLSample:
  """Samples from the policy and estimates KL(pi || pi_ref) on the samples (pure; jit it).

  Args:
    policy_params, ref_params: parameters of the same CausalLM architecture `model`.
    prompt_tokens_BxP, prompt_mask_BxP: LEFT-padded prompts (`data.batching.pad_prompts`).
    key: PRNG key of the sampler.
    model, cfg, eos_id, pad_id: as for `sampling.sample`; cfg must pass `validate_sampling`.

  Returns:
    KLSample; its samples hold cfg.num_samples adjacent rows per prompt.
  """
  validate_sampling(cfg)
  samples = sampling.sample(policy_params, prompt_tokens_BxP, prompt_mask_BxP, key, model=model,
                            cfg=cfg, eos_id=eos_id, pad_id=pad_id)
  score = functools.partial(response_logits_and_logprobs, prompt_tokens_BxP=samples.prompt_tokens_BxP,
                            prompt_mask_BxP=samples.prompt_mask_BxP, tokens_BxS=samples.tokens_BxS,
                            mask_BxS=samples.mask_BxS, model=model)
  logits_BxSxV, logp_BxS = score(policy_params)
  ref_logits_BxSxV, ref_logp_BxS = score(ref_params)
  kl_B = sequence_kl(logp_BxS, ref_logp_BxS, samples.mask_BxS,
                     kl_lib.full_kl(logits_BxSxV, ref_logits_BxSxV))
  return KLSample(samples, logp_BxS, ref_logp_BxS, kl_B, kl_metrics(kl_B, samples.mask_BxS))


def make_kl_eval(model: nn.Module, cfg: sampling.SamplingConfig, *, eos_id: int, pad_id: int):
  """Jitted `(policy_params, ref_params, prompt_tokens_BxP, prompt_mask_BxP, key) -> KLSample`."""
  validate_sampling(cfg)
  return jax.jit(functools.partial(sample_kl_to_reference, model=model, cfg=cfg, eos_id=eos_id,
                                   pad_id=pad_id))
