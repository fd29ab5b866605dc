"""Rollout: sample responses, apply the EOS trick, and compute the quantities PPO holds fixed.

Acronyms: EOS = end-of-sequence token; PPO = Proximal Policy Optimization; KL = Kullback-Leibler.

Two jitted functions (separate so the trainer can time generation on its own):

  `generate`  samples `num_samples` responses per LEFT-padded prompt with the KV-cache sampler
              (`rlhf_jax.sampling.sample`), then applies the EOS trick (PPO_DETAILS item 2): every
              token after the first EOS becomes padding and leaves the mask, so a sampler run to a
              fixed length (stop_at_eos=False) and one that stops at EOS give the same rollout.
              `ended_with_eos_B` marks rows that did end (the others get the missing-EOS penalty).
  `evaluate`  the forward passes over [prompt; response]: old log-probs recomputed by the TRAINER's
              log-prob function (the one the update differentiates, temperature included), the
              frozen reference's log-probs, and the critic's values. The sampler's own log-probs
              are kept as `rollout_logp_BxS` so the rollout-vs-trainer difference is measured
              (item 22), not assumed.

The rollout-vs-trainer difference is ~0 by construction here (one JAX sampler sharing the trainer's
weights and kernels): `rollout_trainer_logprob_metrics` reports its max and mean.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from rlhf_jax import models, ops, sampling
from rlhf_jax.algorithms.ppo.forward import SequenceInputs

LogpFn = Callable[[Any, Any], tuple[jax.Array, jax.Array]]  # (params, inputs) -> (logp_BxS, ent_BxS)
ValueFn = Callable[[Any, Any], jax.Array]  # (params, inputs) -> values_BxS


class Rollout(NamedTuple):
  """What `generate` returns: B * N rows, the N samples of a prompt adjacent."""
  inputs: SequenceInputs
  rollout_logp_BxS: jax.Array  # behaviour log-probs recorded by the sampler (0 on padding)
  ended_with_eos_B: jax.Array  # bool: the response contains EOS
  lengths_B: jax.Array  # int32: response tokens, EOS included


class RolloutForward(NamedTuple):
  """What `evaluate` returns (all [B, S], 0 on padding)."""
  old_logp_BxS: jax.Array  # trainer log-probs under the rollout policy (the PPO ratio's denominator)
  entropy_BxS: jax.Array  # policy entropy at each response position
  ref_logp_BxS: jax.Array  # frozen reference policy's log-probs
  values_BxS: Optional[jax.Array]  # critic values (None without a critic)


def eos_trick(tokens_BxS: jax.Array, logprobs_BxS: jax.Array, mask_BxS: jax.Array, *, eos_id: int,
              pad_id: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Truncates every row after its first EOS (PPO_DETAILS item 2).

  Tokens after the first EOS become `pad_id` with mask 0 and log-prob 0; the EOS itself stays
  (mask 1), so the reward model reads its score at the EOS.

  Returns:
    (tokens_BxS, logprobs_BxS, mask_BxS, ended_with_eos_B).

  Example (eos 3, pad 0): tokens [5, 3, 7, 3] mask [1, 1, 1, 1] -> [5, 3, 0, 0], [1, 1, 0, 0], True.
  """
  valid_BxS = mask_BxS.astype(bool)
  is_eos_BxS = (tokens_BxS == eos_id) & valid_BxS
  # EOS tokens strictly before position s: > 0 means s comes after the first EOS.
  eos_before_BxS = jnp.cumsum(is_eos_BxS.astype(jnp.int32), axis=1) - is_eos_BxS.astype(jnp.int32)
  keep_BxS = valid_BxS & (eos_before_BxS == 0)
  tokens_BxS = jnp.where(keep_BxS, tokens_BxS, pad_id).astype(jnp.int32)
  logprobs_BxS = jnp.where(keep_BxS, logprobs_BxS, 0.0)
  ended_B = jnp.any(is_eos_BxS, axis=1)
  return tokens_BxS, logprobs_BxS, keep_BxS.astype(jnp.int32), ended_B


def generate(params: Any, prompt_tokens_BxP: jax.Array, prompt_mask_BxP: jax.Array, key: jax.Array, *,
             model: models.CausalLM, sampling_cfg: sampling.SamplingConfig, eos_id: int,
             pad_id: int) -> Rollout:
  """Samples and truncates (bind the keyword arguments with functools.partial, then jit)."""
  out = sampling.sample(params, prompt_tokens_BxP, prompt_mask_BxP, key, model=model, cfg=sampling_cfg,
                        eos_id=eos_id, pad_id=pad_id)
  tokens_BxS, logprobs_BxS, mask_BxS, ended_B = eos_trick(out.tokens_BxS, out.logprobs_BxS, out.mask_BxS,
                                                         eos_id=eos_id, pad_id=pad_id)
  inputs = SequenceInputs(prompt_tokens_BxP=out.prompt_tokens_BxP.astype(jnp.int32),
                          prompt_mask_BxP=out.prompt_mask_BxP.astype(jnp.int32),
                          response_tokens_BxS=tokens_BxS, response_mask_BxS=mask_BxS)
  return Rollout(inputs=inputs, rollout_logp_BxS=logprobs_BxS, ended_with_eos_B=ended_B,
                 lengths_B=jnp.sum(mask_BxS, axis=1))


def evaluate(policy_params: Any, ref_params: Any, value_params: Any, inputs: Any, *, logp_fn: LogpFn,
             ref_logp_fn: Optional[LogpFn] = None, value_fn: Optional[ValueFn] = None,
             chunk_rows: Optional[int] = None) -> RolloutForward:
  """Forward passes of policy (old log-probs), reference and critic over one rollout.

  Args:
    policy_params, ref_params, value_params: parameters (value_params ignored without `value_fn`).
    inputs: what the functions read (`SequenceInputs` for language models), leading dim B.
    logp_fn: THE trainer log-prob function, also used by the update (so the first PPO ratio is 1).
    ref_logp_fn: the reference's log-prob function (default: `logp_fn`, same architecture).
    value_fn: the critic, or None for critic-free estimators.
    chunk_rows: run the passes over chunks of this many rows (a `lax.map`), e.g. the PPO minibatch
      size. Besides bounding activation memory, this makes the old log-probs bitwise equal to the
      update's first forward pass: XLA picks matmul kernels by shape, so the same rows in a batch of
      another size can differ in the last bit (measured: 5e-7 between batches of 8 and 4 on CPU).
  """
  def passes(chunk):
    old_logp_BxS, entropy_BxS = logp_fn(policy_params, chunk)
    ref_logp_BxS, _ = (ref_logp_fn or logp_fn)(ref_params, chunk)
    values_BxS = None if value_fn is None else value_fn(value_params, chunk)
    return old_logp_BxS, entropy_BxS, ref_logp_BxS, values_BxS

  batch_size = jax.tree.leaves(inputs)[0].shape[0]
  if chunk_rows is None or chunk_rows >= batch_size:
    outs = passes(inputs)
  else:
    if batch_size % chunk_rows:
      raise ValueError(f"evaluate: {batch_size} rows are not divisible by chunk_rows={chunk_rows}")
    num_chunks = batch_size // chunk_rows
    chunks = jax.tree.map(lambda x: x.reshape((num_chunks, chunk_rows) + x.shape[1:]), inputs)
    outs = jax.lax.map(passes, chunks)
    outs = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), outs)
  old_logp_BxS, entropy_BxS, ref_logp_BxS, values_BxS = jax.lax.stop_gradient(outs)
  return RolloutForward(old_logp_BxS=old_logp_BxS, entropy_BxS=entropy_BxS, ref_logp_BxS=ref_logp_BxS,
                        values_BxS=values_BxS)


def rollout_trainer_logprob_metrics(rollout_logp_BxS: jax.Array, trainer_logp_BxS: jax.Array,
                                    mask_BxS: jax.Array) -> dict[str, jax.Array]:
  """|rollout - trainer| log-prob difference over response tokens (PPO_DETAILS item 22).

  Metrics: "rollout/logprob_diff_max" and "rollout/logprob_diff_mean" (per-token mean over the mask).
  """
  diff_BxS = jnp.abs(trainer_logp_BxS.astype(jnp.float32) - rollout_logp_BxS.astype(jnp.float32))
  valid_BxS = mask_BxS.astype(bool)
  return {"rollout/logprob_diff_max": jnp.max(jnp.where(valid_BxS, diff_BxS, 0.0)),
          "rollout/logprob_diff_mean": ops.masked_mean(diff_BxS, mask_BxS)}
