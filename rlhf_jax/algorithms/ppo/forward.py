"""Forward passes over [prompt; response] for the four models of the RLHF loop.

The policy, the frozen reference policy, the value model and the reward model all read the same
concatenation of a LEFT-padded prompt [B, P] and a RIGHT-padded response [B, S] (PPO_DETAILS
items 1 and 3):

  tokens_BxL   = [prompt_tokens_BxP ; response_tokens_BxS]          L = P + S
  segment_BxL  = [prompt_mask_BxP   ; response_mask_BxS]            0 on padding (attention mask)
  position_BxL = cumsum(segment) - segment                           positions from the mask

Output t of a causal model predicts token t + 1, so response token s is predicted (and its state
valued) at position P - 1 + s:

  logp_BxS[:, s]   = log softmax(logits[:, P - 1 + s] / temperature)[response_tokens[:, s]]
  values_BxS[:, s] = V(hidden[:, P - 1 + s])                         (TRL / LHP alignment)
  score_B          = reward-model head at the last real token of [prompt; response]

The temperature divides the logits in every training-time log-prob (item 4), so trainer log-probs
match the sampler's. The models have no dropout (item 5), so the passes are deterministic.

These are the `logp_fn` / `value_fn` of the generic PPO update (`update.py`): pure functions
`(params, inputs) -> arrays` that the update differentiates; the tabular bandit of the tests plugs
in its own functions with the same signatures.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlhf_jax import models, ops


class SequenceInputs(NamedTuple):
  """A batch of [prompt; response] rows (all int32)."""
  prompt_tokens_BxP: jax.Array  # left-padded prompt ids
  prompt_mask_BxP: jax.Array  # 1 on real prompt tokens
  response_tokens_BxS: jax.Array  # right-padded response ids (EOS included, pad after it)
  response_mask_BxS: jax.Array  # 1 on real response tokens (EOS included)


def concat(inputs: SequenceInputs) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(tokens_BxL, positions_BxL, segment_ids_BxL) of the concatenated rows."""
  tokens_BxL = jnp.concatenate([inputs.prompt_tokens_BxP, inputs.response_tokens_BxS], axis=1)
  segment_BxL = jnp.concatenate([inputs.prompt_mask_BxP, inputs.response_mask_BxS], axis=1).astype(jnp.int32)
  positions_BxL = jnp.cumsum(segment_BxL, axis=1) - segment_BxL
  return tokens_BxL.astype(jnp.int32), positions_BxL, segment_BxL


def _response_slice(x_BxLx: jax.Array, prompt_len: int, response_len: int) -> jax.Array:
  """Outputs at positions P - 1 ... P + S - 2: the ones that predict / value response tokens."""
  return x_BxLx[:, prompt_len - 1:prompt_len - 1 + response_len]


def policy_logprobs(params: Any, inputs: SequenceInputs, *, model: models.CausalLM, temperature: float = 1.0,
                    chunk_size: int = 0, with_entropy: bool = True) -> tuple[jax.Array, jax.Array]:
  """Per-token log-probs (and entropies) of the response under `params`: (logp_BxS, ent_BxS).

  Both are 0 on padding. `chunk_size > 0` uses the vocabulary-chunked path that never builds
  [B, L, V] logits (`ops.chunked_token_logprobs`); both paths give the same numbers. Without
  `with_entropy` the entropy is returned as zeros (saves a pass over the vocabulary).
  """
  prompt_len, response_len = inputs.prompt_tokens_BxP.shape[1], inputs.response_tokens_BxS.shape[1]
  if prompt_len < 1:
    raise ValueError("policy_logprobs needs at least one prompt position (e.g. BOS) to predict the response")
  tokens_BxL, positions_BxL, segment_BxL = concat(inputs)
  out = model.apply({"params": params}, tokens_BxL, positions_BxL, segment_BxL, return_logits=chunk_size <= 0)
  targets_BxS = inputs.response_tokens_BxS.astype(jnp.int32)
  if chunk_size > 0:
    hidden_BxSxD = _response_slice(out.hidden, prompt_len, response_len)
    unembed_DxV = models.unembedding_matrix(params, model.config)
    if with_entropy:
      logp_BxS, ent_BxS = ops.chunked_token_logprobs(hidden_BxSxD, unembed_DxV, targets_BxS, temperature,
                                                     chunk_size=chunk_size, return_entropy=True)
    else:
      logp_BxS = ops.chunked_token_logprobs(hidden_BxSxD, unembed_DxV, targets_BxS, temperature,
                                            chunk_size=chunk_size)
      ent_BxS = jnp.zeros_like(logp_BxS)
  else:
    logits_BxSxV = _response_slice(out.logits, prompt_len, response_len)
    if with_entropy:
      logp_BxS, ent_BxS = ops.token_logprobs_and_entropy(logits_BxSxV, targets_BxS, temperature)
    else:
      logp_BxS = ops.token_logprobs(logits_BxSxV, targets_BxS, temperature)
      ent_BxS = jnp.zeros_like(logp_BxS)
  valid_BxS = inputs.response_mask_BxS.astype(bool)
  return jnp.where(valid_BxS, logp_BxS, 0.0), jnp.where(valid_BxS, ent_BxS, 0.0)


def values(params: Any, inputs: SequenceInputs, *, value_model: models.ScalarModel) -> jax.Array:
  """Critic values V(s_t) for every response token's state: [B, S] float32, 0 on padding."""
  prompt_len, response_len = inputs.prompt_tokens_BxP.shape[1], inputs.response_tokens_BxS.shape[1]
  tokens_BxL, positions_BxL, segment_BxL = concat(inputs)
  values_BxL, _ = value_model.apply({"params": params}, tokens_BxL, positions_BxL, segment_BxL)
  values_BxS = _response_slice(values_BxL, prompt_len, response_len).astype(jnp.float32)
  return jnp.where(inputs.response_mask_BxS.astype(bool), values_BxS, 0.0)


def last_token_index(inputs: SequenceInputs) -> jax.Array:
  """Index in [prompt; response] of the last real token: P - 1 + response length ([B] int32)."""
  prompt_len = inputs.prompt_tokens_BxP.shape[1]
  length_B = jnp.sum(inputs.response_mask_BxS.astype(jnp.int32), axis=1)
  return (prompt_len - 1 + length_B).astype(jnp.int32)


def reward_scores(params: Any, inputs: SequenceInputs, *, reward_model: models.ScalarModel) -> jax.Array:
  """Reward-model score read at the last real token of [prompt; response] (item 1): [B] float32."""
  tokens_BxL, positions_BxL, segment_BxL = concat(inputs)
  _, score_B = reward_model.apply({"params": params}, tokens_BxL, positions_BxL, segment_BxL,
                                  last_token_index(inputs))
  return score_B.astype(jnp.float32)
