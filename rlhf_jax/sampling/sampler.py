"""Jit-compiled autoregressive sampling with a KV cache.

Prompts are left-padded to a bucketed length P so every row writes the same cache slot at each step;
position ids come from the mask (`cumsum(mask) - mask`, PPO_DETAILS item 3). A prefill pass writes the
prompt into the cache, then a compiled `lax.while_loop` decodes up to S new tokens into a fixed-size
buffer, stopping each row at its EOS (and the whole loop once every row has stopped).

Returned per row (B * N rows, the N samples of a prompt adjacent):
  tokens_BxS   sampled ids, `pad_id` after the EOS,
  logprobs_BxS log-probs under the distribution actually sampled from (temperature, top-k, top-p
               applied; for greedy decoding the temperature-1 log-probs of the chosen tokens), 0 on padding,
  mask_BxS     1 for response tokens up to and including the EOS.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.models.kv_cache import KVCache, init_cache
from rlhf_jax.models.transformer import CausalLM
from rlhf_jax.sampling import processors

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64  # S: size of the output buffer (bucketed up by the host API)
  temperature: float = 1.0  # 0 means greedy decoding
  top_k: int = 0  # keep the k most likely tokens (0 = off)
  top_p: float = 1.0  # nucleus mass (1 = off)
  num_samples: int = 1  # N samples per prompt
  stop_at_eos: bool = True  # False: always generate exactly max_new_tokens (benchmarks)

  def validate(self) -> "SamplingConfig":
    if self.max_new_tokens <= 0:
      raise ValueError(f"sampling.max_new_tokens must be positive, got {self.max_new_tokens}")
    if self.temperature < 0:
      raise ValueError(f"sampling.temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"sampling.top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"sampling.top_k must be >= 0, got {self.top_k}")
    if self.num_samples <= 0:
      raise ValueError(f"sampling.num_samples must be positive, got {self.num_samples}")
    return self


class SampleOutput(NamedTuple):
  prompt_tokens_BxP: jax.Array  # left-padded prompts, repeated N times
  prompt_mask_BxP: jax.Array
  tokens_BxS: jax.Array
  logprobs_BxS: jax.Array
  mask_BxS: jax.Array
  lengths_B: jax.Array  # response lengths (EOS included)
  ended_with_eos_B: jax.Array


@flax.struct.dataclass
class _Carry:
  step: jax.Array
  cache: KVCache
  logits_BxV: jax.Array
  tokens_BxS: jax.Array
  logprobs_BxS: jax.Array
  mask_BxS: jax.Array
  done_B: jax.Array


def _select(logits_BxV: jax.Array, key: jax.Array, cfg: SamplingConfig) -> tuple[jax.Array, jax.Array]:
  """Chooses the next token and its log-prob under the distribution it was drawn from."""
  if cfg.temperature == 0:
    logp_BxV = jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)
    token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  else:
    proc_BxV = processors.process_logits(logits_BxV, cfg.temperature, cfg.top_k, cfg.top_p)
    logp_BxV = jax.nn.log_softmax(proc_BxV, axis=-1)
    token_B = jax.random.categorical(key, proc_BxV, axis=-1).astype(jnp.int32)
  return token_B, jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]


def sample(params: Any, prompt_tokens_BxP: jax.Array, prompt_mask_BxP: jax.Array, key: jax.Array,
           num_new_tokens: Optional[jax.Array] = None, *, model: CausalLM, cfg: SamplingConfig, eos_id: int,
           pad_id: int) -> SampleOutput:
  """Pure sampling function (jit it with `model`, `cfg`, ids bound statically).

  Args:
    params: CausalLM parameters (plain pytree).
    prompt_tokens_BxP: LEFT-padded prompt ids.
    prompt_mask_BxP: 1 for real prompt tokens.
    key: PRNG key (one categorical draw per step over all rows, from `fold_in(key, step)`).
    num_new_tokens: optional traced limit <= cfg.max_new_tokens, so a bucketed buffer of size S can serve
      any requested length without recompiling; slots past it stay padding.
  """
  N, S = cfg.num_samples, cfg.max_new_tokens
  limit = S if num_new_tokens is None else jnp.minimum(num_new_tokens, S)
  prompt_tokens_BxP = jnp.repeat(prompt_tokens_BxP, N, axis=0)
  prompt_mask_BxP = jnp.repeat(prompt_mask_BxP.astype(jnp.int32), N, axis=0)
  B, P = prompt_tokens_BxP.shape
  positions_BxP = jnp.cumsum(prompt_mask_BxP, axis=1) - prompt_mask_BxP
  prompt_len_B = jnp.sum(prompt_mask_BxP, axis=1)

  cache = init_cache(model.config, B, P + S)
  out = model.apply({"params": params}, prompt_tokens_BxP, positions_BxP, prompt_mask_BxP, cache=cache)
  carry = _Carry(step=jnp.zeros((), jnp.int32), cache=out.cache, logits_BxV=out.logits[:, -1, :],
                 tokens_BxS=jnp.full((B, S), pad_id, jnp.int32), logprobs_BxS=jnp.zeros((B, S), jnp.float32),
                 mask_BxS=jnp.zeros((B, S), jnp.int32), done_B=jnp.zeros((B,), bool))

  def cond(c: _Carry):
    running = c.step < limit
    if cfg.stop_at_eos:
      running = running & ~jnp.all(c.done_B)
    return running

  def body(c: _Carry) -> _Carry:
    token_B, logp_B = _select(c.logits_BxV, jax.random.fold_in(key, c.step), cfg)
    live_B = ~c.done_B
    token_B = jnp.where(live_B, token_B, pad_id)
    tokens_BxS = c.tokens_BxS.at[:, c.step].set(token_B)
    logprobs_BxS = c.logprobs_BxS.at[:, c.step].set(jnp.where(live_B, logp_B, 0.0))
    mask_BxS = c.mask_BxS.at[:, c.step].set(live_B.astype(jnp.int32))
    done_B = c.done_B | (live_B & (token_B == eos_id) & cfg.stop_at_eos)
    step_out = model.apply({"params": params}, token_B[:, None], (prompt_len_B + c.step)[:, None],
                           jnp.ones((B, 1), jnp.int32), cache=c.cache)
    return _Carry(step=c.step + 1, cache=step_out.cache, logits_BxV=step_out.logits[:, -1, :],
                  tokens_BxS=tokens_BxS, logprobs_BxS=logprobs_BxS, mask_BxS=mask_BxS, done_B=done_B)

  final = jax.lax.while_loop(cond, body, carry)
  ended_B = jnp.any((final.tokens_BxS == eos_id) & (final.mask_BxS == 1), axis=1)
  return SampleOutput(prompt_tokens_BxP=prompt_tokens_BxP, prompt_mask_BxP=prompt_mask_BxP,
                      tokens_BxS=final.tokens_BxS, logprobs_BxS=final.logprobs_BxS, mask_BxS=final.mask_BxS,
                      lengths_B=jnp.sum(final.mask_BxS, axis=1), ended_with_eos_B=ended_B)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= n (the compiled shape that n is padded to)."""
  for b in sorted(buckets):
    if b >= n:
      return b
  raise ValueError(f"length {n} exceeds the largest bucket {max(buckets)}")


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Host-side left padding of token lists to `length`."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), np.int32)
  for i, p in enumerate(prompts):
    if len(p) > length:
      raise ValueError(f"prompt {i} has {len(p)} tokens, more than the padded length {length}")
    if len(p):
      tokens[i, length - len(p):] = p
      mask[i, length - len(p):] = 1
  return tokens, mask


class Sampler:
  """Host-side front end: validates, buckets prompt/output lengths and calls one compiled function per
  (batch, prompt bucket, output bucket, sampling config)."""

  def __init__(self, model: CausalLM, *, eos_id: int, pad_id: int, prompt_buckets: Sequence[int] = DEFAULT_BUCKETS,
               output_buckets: Sequence[int] = DEFAULT_BUCKETS, in_shardings: Any = None):
    if eos_id == pad_id:
      raise ValueError(f"pad_id ({pad_id}) must differ from eos_id ({eos_id})")
    self.model = model
    self.eos_id, self.pad_id = eos_id, pad_id
    self.prompt_buckets, self.output_buckets = tuple(prompt_buckets), tuple(output_buckets)
    self._jitted: dict[SamplingConfig, Any] = {}
    self._in_shardings = in_shardings

  def compiled(self, cfg: SamplingConfig):
    """The jitted sampling function for `cfg` (one per config; shapes are bucketed by the caller)."""
    if cfg not in self._jitted:
      fn = functools.partial(sample, model=self.model, cfg=cfg, eos_id=self.eos_id, pad_id=self.pad_id)
      self._jitted[cfg] = jax.jit(fn) if self._in_shardings is None else jax.jit(fn, in_shardings=self._in_shardings)
    return self._jitted[cfg]

  def generate(self, params: Any, prompts: Sequence[Sequence[int]], key: jax.Array, cfg: SamplingConfig,
               exact_output_length: bool = False) -> SampleOutput:
    """Samples `cfg.num_samples` responses per prompt (prompts are token-id lists, BOS included if wanted)."""
    cfg.validate()
    if not prompts:
      raise ValueError("generate() needs at least one prompt")
    longest = max(len(p) for p in prompts)
    max_len = self.model.config.max_len
    S = cfg.max_new_tokens if exact_output_length else bucket_length(cfg.max_new_tokens, self.output_buckets)
    if longest + cfg.max_new_tokens > max_len:
      i = max(range(len(prompts)), key=lambda j: len(prompts[j]))
      raise ValueError(f"prompt {i} has {longest} tokens; with sampling.max_new_tokens={cfg.max_new_tokens} that "
                       f"exceeds model.max_len={max_len}")
    P = min(bucket_length(longest, self.prompt_buckets), max_len - S)
    P = max(P, longest)
    tokens, mask = left_pad(prompts, P, self.pad_id)
    run_cfg = dataclasses.replace(cfg, max_new_tokens=S)
    out = self.compiled(run_cfg)(params, jnp.asarray(tokens), jnp.asarray(mask), key,
                                 jnp.asarray(cfg.max_new_tokens, jnp.int32))
    if S != cfg.max_new_tokens:  # the loop stopped at max_new_tokens; drop the bucket's empty slack
      keep = cfg.max_new_tokens
      out = out._replace(tokens_BxS=out.tokens_BxS[:, :keep], logprobs_BxS=out.logprobs_BxS[:, :keep],
                         mask_BxS=out.mask_BxS[:, :keep])
    return out
