"""SFT (Supervised Fine-Tuning) loss: negative log-likelihood of the target tokens.

  loss = aggregate_{b, l : mask[b, l] = 1} ( -log pi(y[b, l] | x, y[b, <l]) )

Only response tokens are scored: the loss mask is 0 on the prompt and on padding, as in InstructGPT
(Ouyang et al. 2022, "Training language models to follow instructions with human feedback"), so the
model learns to answer rather than to reproduce prompts. The aggregation decides how tokens are
weighed (`ops.masked.aggregate_loss`):

  token_mean     sum(nll * mask) / sum(mask)                 every target token weighs the same
  sequence_mean  mean_b [ sum_l(nll * mask) / sum_l(mask) ]  every sequence weighs the same
  fixed_length   sum(nll * mask) / (B * fixed_length)        constant denominator

Shape letters: B batch, L sequence (already shifted so position l is scored on token l).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rlhf_jax.ops import masked


def sft_loss(logp_BxL: jax.Array, loss_mask_BxL: jax.Array,
             aggregation: masked.Aggregation = "token_mean", *,
             correct_BxL: Optional[jax.Array] = None,
             fixed_length: Optional[int] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Masked negative log-likelihood of target tokens.

  Args:
    logp_BxL: log pi(target token) per position, e.g. from `ops.logprobs.token_logprobs` applied to
      the output of `shift_for_next_token`.
    loss_mask_BxL: 1 on tokens that are trained on (the response), 0 on prompt and padding.
    aggregation: "token_mean", "sequence_mean" or "fixed_length" (see the module docstring).
    correct_BxL: optional booleans, True where the model's argmax equals the target token; adds
      the masked token accuracy to the metrics.
    fixed_length: the constant per-sequence token count for aggregation="fixed_length".

  Returns:
    `(loss, metrics)`. metrics:
      loss: the aggregated NLL (equal to the returned loss);
      nll_per_token: sum(nll * mask) / sum(mask), whatever the aggregation;
      perplexity: exp(nll_per_token), the usual token-level perplexity;
      num_tokens: sum(mask);
      accuracy: sum(correct * mask) / sum(mask), only when `correct_BxL` is given.
    An all-zero mask gives loss 0 and perplexity 1 (denominators are clamped at 1).

  Example:
    >>> logp = jnp.log(jnp.array([[0.9, 0.5, 0.25]]))
    >>> sft_loss(logp, jnp.array([[0, 1, 1]]))[0]  # (log 2 + log 4) / 2 = 1.5 log 2
  """
  if logp_BxL.ndim != 2:
    raise ValueError(f"sft_loss: logp must be [B, L], got shape {logp_BxL.shape}")
  if loss_mask_BxL.shape != logp_BxL.shape:
    raise ValueError(f"sft_loss: loss_mask shape {loss_mask_BxL.shape} != logp shape "
                     f"{logp_BxL.shape}")
  if correct_BxL is not None and correct_BxL.shape != logp_BxL.shape:
    raise ValueError(f"sft_loss: correct shape {correct_BxL.shape} != logp shape {logp_BxL.shape}")

  nll_BxL = -logp_BxL.astype(jnp.promote_types(logp_BxL.dtype, jnp.float32))
  loss = masked.aggregate_loss(nll_BxL, loss_mask_BxL, aggregation, fixed_length=fixed_length)
  nll_per_token = masked.masked_mean(nll_BxL, loss_mask_BxL)
  metrics = {
      "loss": loss,
      "nll_per_token": nll_per_token,
      "perplexity": jnp.exp(nll_per_token),
      "num_tokens": jnp.sum(loss_mask_BxL.astype(jnp.float32)),
  }
  if correct_BxL is not None:
    metrics["accuracy"] = masked.masked_mean(correct_BxL.astype(jnp.float32), loss_mask_BxL)
  return loss, metrics
