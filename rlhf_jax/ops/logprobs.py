"""Per-token log-probabilities and entropies of a language model's next-token distribution.

Every RLHF objective starts from `log pi(y_t | x, y_<t)`: SFT (Supervised Fine-Tuning) maximises it,
DPO (Direct Preference Optimization) sums it over a response, PPO (Proximal Policy Optimization)
takes ratios of it. This module computes it, and the entropy of the same distribution, from logits

  z = logits / temperature
  logp_t = z_t[y_t] - logsumexp_v z_t[v]
  H_t = -sum_v p_t[v] log p_t[v] = logsumexp_v z_t[v] - sum_v p_t[v] z_t[v]

Two paths give the same numbers:

* `token_logprobs` / `entropy` / `token_logprobs_and_entropy` take full logits `[B, L, V]`.
* `chunked_token_logprobs` takes the last hidden state `[B, L, D]` and the unembedding `[D, V]` and
  never materialises `[B, L, V]`: it scans over vocabulary chunks with an online logsumexp, and
  rematerialises each chunk's logits in the backward pass. With V = 128k and L = 4k the float32
  logits of one sequence take about 2 GiB; the chunked path keeps `[B, L, chunk_size]` at a time.

Alignment: position t of the logits predicts token t + 1. These functions gather at whatever
`tokens_BxL` they are given, so callers align first with `shift_for_next_token`.

Numerics: all maths runs in at least float32 (bfloat16 / float16 inputs are upcast; float64 stays
float64, which lets tests check gradients by finite differences). The temperature divides the logits
before the softmax, the same way the sampler applies it, so behaviour log-probs recorded at sampling
time and log-probs recomputed here agree.

Out-of-range token ids (negative or >= V) give a NaN log-prob in both paths, so a bad id is loud
instead of silently reading another token's probability. Masked-out positions stay harmless when
reduced with `ops.masked` (which selects, never multiplies).

Shape letters: B batch, L sequence, V vocabulary, D model width, C vocabulary chunk.
"""
from __future__ import annotations

import numbers
from typing import Union

import jax
import jax.numpy as jnp

Temperature = Union[float, jax.Array]


def _upcast(x: jax.Array) -> jax.Array:
  """Casts to float32 unless the dtype is already at least as wide (float64 stays float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_temperature(temperature: Temperature) -> None:
  if isinstance(temperature, numbers.Number) and not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _check_logits_tokens(logits_BxLxV: jax.Array, tokens_BxL: jax.Array, what: str) -> None:
  if logits_BxLxV.ndim < 1 or tokens_BxL.shape != logits_BxLxV.shape[:-1]:
    raise ValueError(f"{what}: tokens shape {tokens_BxL.shape} must equal the leading dims of "
                     f"logits shape {logits_BxLxV.shape} (align with shift_for_next_token first)")
  if not jnp.issubdtype(tokens_BxL.dtype, jnp.integer):
    raise ValueError(f"{what}: tokens must be integer ids, got dtype {tokens_BxL.dtype}")


def _gather_or_nan(values_BxLxV: jax.Array, tokens_BxL: jax.Array) -> jax.Array:
  """values[..., tokens] with NaN where the token id is outside [0, V)."""
  vocab = values_BxLxV.shape[-1]
  valid_BxL = (tokens_BxL >= 0) & (tokens_BxL < vocab)
  idx_BxL = jnp.clip(tokens_BxL, 0, vocab - 1)
  picked_BxL = jnp.take_along_axis(values_BxLxV, idx_BxL[..., None], axis=-1)[..., 0]
  return jnp.where(valid_BxL, picked_BxL, jnp.nan)


def _entropy_from_log_softmax(logp_BxLxV: jax.Array) -> jax.Array:
  # -inf logits (a masked vocabulary) give p = 0 and log p = -inf; 0 * -inf would be NaN in the
  # value and in the gradient, so those entries are replaced by 0 *before* the product.
  p_BxLxV = jnp.exp(logp_BxLxV)
  safe_logp_BxLxV = jnp.where(p_BxLxV > 0, logp_BxLxV, 0.0)
  return -jnp.sum(p_BxLxV * safe_logp_BxLxV, axis=-1)


def token_logprobs_and_entropy(logits_BxLxV: jax.Array, tokens_BxL: jax.Array,
                               temperature: Temperature = 1.0) -> tuple[jax.Array, jax.Array]:
  """Log-probability of `tokens` and entropy of the distribution, from one log-softmax.

  logp[b, l] = log softmax(logits[b, l] / temperature)[tokens[b, l]]
  ent[b, l]  = -sum_v p[b, l, v] log p[b, l, v]

  Args:
    logits_BxLxV: logits (any float dtype; maths in >= float32). -inf entries are allowed.
    tokens_BxL: integer ids, already aligned with the logits (see `shift_for_next_token`).
    temperature: divides the logits before the softmax; must be > 0.

  Returns:
    `(logp_BxL, ent_BxL)`, both in >= float32.

  Example:
    >>> logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25]]]))
    >>> token_logprobs_and_entropy(logits, jnp.array([[1]]))  # (log 0.25, 1.5 log 2)
  """
  _check_logits_tokens(logits_BxLxV, tokens_BxL, "token_logprobs_and_entropy")
  _check_temperature(temperature)
  logp_BxLxV = jax.nn.log_softmax(_upcast(logits_BxLxV) / temperature, axis=-1)
  return _gather_or_nan(logp_BxLxV, tokens_BxL), _entropy_from_log_softmax(logp_BxLxV)


def token_logprobs(logits_BxLxV: jax.Array, tokens_BxL: jax.Array,
                   temperature: Temperature = 1.0) -> jax.Array:
  """log softmax(logits / temperature) gathered at `tokens`: `[B, L, V], [B, L] -> [B, L]`.

  Example:
    >>> token_logprobs(jnp.zeros((1, 1, 4)), jnp.array([[2]]))  # [[log 0.25]]
  """
  _check_logits_tokens(logits_BxLxV, tokens_BxL, "token_logprobs")
  _check_temperature(temperature)
  logp_BxLxV = jax.nn.log_softmax(_upcast(logits_BxLxV) / temperature, axis=-1)
  return _gather_or_nan(logp_BxLxV, tokens_BxL)


def entropy(logits_BxLxV: jax.Array, temperature: Temperature = 1.0) -> jax.Array:
  """Entropy (nats) of softmax(logits / temperature) at every position: `[B, L, V] -> [B, L]`.

  Example:
    >>> entropy(jnp.zeros((1, 1, 4)))  # [[log 4]]
  """
  _check_temperature(temperature)
  logp_BxLxV = jax.nn.log_softmax(_upcast(logits_BxLxV) / temperature, axis=-1)
  return _entropy_from_log_softmax(logp_BxLxV)


def shift_for_next_token(inputs_BxLx: jax.Array, tokens_BxL: jax.Array,
                         mask_BxL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Aligns a causal model's outputs with the tokens they predict.

  The model's output at position t (logits `[B, L, V]`, or the hidden state `[B, L, D]` fed to
  `chunked_token_logprobs`) predicts token t + 1, so the last output and the first token have no
  partner. Returns `(inputs[:, :-1], tokens[:, 1:], mask[:, 1:])`, all of length L - 1.

  `mask_BxL` marks which *tokens* are prediction targets (e.g. 1 on response tokens, 0 on prompt and
  padding), so it is shifted with the tokens. Example: tokens `[p0, p1, r0, r1]` with mask
  `[0, 0, 1, 1]` give targets `[p1, r0, r1]` with mask `[0, 1, 1]`: the output at p1 is scored
  on r0.
  """
  if inputs_BxLx.ndim < 2 or inputs_BxLx.shape[:2] != tokens_BxL.shape:
    raise ValueError(f"shift_for_next_token: inputs shape {inputs_BxLx.shape} must start with "
                     f"tokens shape {tokens_BxL.shape} ([B, L])")
  if mask_BxL.shape != tokens_BxL.shape:
    raise ValueError(f"shift_for_next_token: mask shape {mask_BxL.shape} != tokens shape "
                     f"{tokens_BxL.shape}")
  if tokens_BxL.shape[1] < 2:
    raise ValueError(f"shift_for_next_token: need L >= 2 to predict anything, got L = "
                     f"{tokens_BxL.shape[1]}")
  return inputs_BxLx[:, :-1], tokens_BxL[:, 1:], mask_BxL[:, 1:]


def chunked_token_logprobs(hidden_BxLxD: jax.Array, unembed_DxV: jax.Array, tokens_BxL: jax.Array,
                           temperature: Temperature = 1.0, chunk_size: int = 8192,
                           return_entropy: bool = False):
  """Token log-probs (and entropy) of `hidden @ unembed` without materialising `[B, L, V]`.

  Equal to `token_logprobs(einsum("bld,dv->blv", hidden, unembed), tokens, temperature)` (and to
  `entropy(...)` of the same logits). The vocabulary is processed in `ceil(V / C)` chunks by a
  `lax.scan` that carries, per position, the running max m, the rescaled partition sum
  s = sum_v exp(z_v - m), the rescaled first moment a = sum_v exp(z_v - m) z_v and the target logit:

    logsumexp z = m + log s,    logp = z[y] - logsumexp z,    H = logsumexp z - a / s

  (H = log Z - E_p[z] because log p_v = z_v - log Z). When a chunk raises the max, s and a are
  rescaled by exp(m_old - m_new). The max is held out of the gradient (logsumexp does not depend on
  it). Each chunk body is wrapped in `jax.checkpoint`, so the backward pass recomputes that chunk's
  logits from `hidden` instead of storing `[B, L, V]` worth of residuals.

  Peak temporary memory is a few `[B, L, C]` float32 buffers plus, in the backward pass, a float32
  `[D, V]` accumulator for the unembedding gradient (compiled on CPU with B = 1, L = 1024, D = 256,
  V = 128k, C = 4096: 206 MiB of temporaries for value and gradients, against 500 MiB for the
  float32 logits alone).

  V need not be a multiple of C: the last chunk is read from `[V - C, V)` (a dynamic slice cannot
  run past the end) and the columns already covered by the previous chunk are masked out, so the
  unembedding is never padded or copied.

  Args:
    hidden_BxLxD: final hidden states (e.g. bfloat16); already aligned with `tokens_BxL`.
    unembed_DxV: unembedding matrix (e.g. the transposed input embedding); products accumulate in
      float32 (`preferred_element_type`).
    tokens_BxL: integer target ids in [0, V); others give NaN.
    temperature: divides the logits; must be > 0.
    chunk_size: vocabulary columns per scan step (clamped to V).
    return_entropy: also return the entropy of each position's distribution.

  Returns:
    `logp_BxL`, or `(logp_BxL, ent_BxL)` when `return_entropy`; float32 (float64 for float64 input).

  Example:
    >>> h = jnp.ones((1, 1, 2)); w = jnp.zeros((2, 5))
    >>> chunked_token_logprobs(h, w, jnp.array([[3]]), chunk_size=2)  # [[log 0.2]]
  """
  if hidden_BxLxD.ndim != 3 or unembed_DxV.ndim != 2:
    raise ValueError(f"chunked_token_logprobs: hidden must be [B, L, D] and unembed [D, V]; got "
                     f"{hidden_BxLxD.shape} and {unembed_DxV.shape}")
  if hidden_BxLxD.shape[-1] != unembed_DxV.shape[0]:
    raise ValueError(f"chunked_token_logprobs: hidden width {hidden_BxLxD.shape[-1]} != unembed "
                     f"rows {unembed_DxV.shape[0]}")
  if tokens_BxL.shape != hidden_BxLxD.shape[:2]:
    raise ValueError(f"chunked_token_logprobs: tokens shape {tokens_BxL.shape} != hidden "
                     f"[B, L] {hidden_BxLxD.shape[:2]} (align with shift_for_next_token first)")
  if not jnp.issubdtype(tokens_BxL.dtype, jnp.integer):
    raise ValueError(f"chunked_token_logprobs: tokens must be integer ids, got {tokens_BxL.dtype}")
  if not isinstance(chunk_size, int) or chunk_size <= 0:
    raise ValueError(
        f"chunked_token_logprobs: chunk_size must be a positive int, got {chunk_size!r}")
  _check_temperature(temperature)

  vocab = unembed_DxV.shape[1]
  chunk = min(chunk_size, vocab)
  num_chunks = -(-vocab // chunk)
  acc_dtype = jnp.promote_types(jnp.result_type(hidden_BxLxD, unembed_DxV), jnp.float32)
  batch_shape = tokens_BxL.shape

  def body(carry, chunk_index):
    m_BxL, s_BxL, a_BxL, target_BxL = carry
    nominal_start = chunk_index * chunk
    start = jnp.minimum(nominal_start, vocab - chunk)
    w_DxC = jax.lax.dynamic_slice_in_dim(unembed_DxV, start, chunk, axis=1)
    z_BxLxC = jnp.einsum("bld,dc->blc", hidden_BxLxD, w_DxC,
                         preferred_element_type=acc_dtype) / temperature
    # Columns before `nominal_start` belong to the previous chunk (only in the clamped last one).
    cols_C = start + jnp.arange(chunk)
    fresh_1x1xC = (cols_C >= nominal_start)[None, None, :]

    chunk_max_BxL = jnp.max(jnp.where(fresh_1x1xC, z_BxLxC, -jnp.inf), axis=-1)
    new_m_BxL = jax.lax.stop_gradient(jnp.maximum(m_BxL, chunk_max_BxL))
    rescale_BxL = jnp.exp(m_BxL - new_m_BxL)  # exp(-inf) = 0 on the first chunk
    e_BxLxC = jnp.where(fresh_1x1xC, jnp.exp(z_BxLxC - new_m_BxL[..., None]), 0.0)
    new_s_BxL = s_BxL * rescale_BxL + jnp.sum(e_BxLxC, axis=-1)
    new_a_BxL = a_BxL * rescale_BxL + jnp.sum(e_BxLxC * z_BxLxC, axis=-1)

    local_BxL = tokens_BxL - start
    hit_BxL = (tokens_BxL >= nominal_start) & (local_BxL < chunk)
    z_at_BxL = jnp.take_along_axis(
        z_BxLxC, jnp.clip(local_BxL, 0, chunk - 1)[..., None], axis=-1)[..., 0]
    new_target_BxL = jnp.where(hit_BxL, z_at_BxL, target_BxL)
    return (new_m_BxL, new_s_BxL, new_a_BxL, new_target_BxL), None

  init = (jnp.full(batch_shape, -jnp.inf, acc_dtype),
          jnp.zeros(batch_shape, acc_dtype),
          jnp.zeros(batch_shape, acc_dtype),
          jnp.full(batch_shape, jnp.nan, acc_dtype))  # stays NaN for ids outside [0, V)
  # prevent_cse=False is safe (and faster) under scan, per the jax.checkpoint docs.
  (m_BxL, s_BxL, a_BxL, target_BxL), _ = jax.lax.scan(
      jax.checkpoint(body, prevent_cse=False), init, jnp.arange(num_chunks))
  logsumexp_BxL = m_BxL + jnp.log(s_BxL)
  logp_BxL = target_BxL - logsumexp_BxL
  if not return_entropy:
    return logp_BxL
  return logp_BxL, logsumexp_BxL - a_BxL / s_BxL
