"""DPO-family training step: summed response log-probs, reference handling, one jitted update.

DPO = Direct Preference Optimization (Rafailov et al. 2023); the family (cDPO, IPO, SLiC hinge,
robust DPO, and the reference-free SimPO and ORPO) lives in `rlhf_jax.losses.dpo` as pure
functions of summed log-probs and is chosen here by name (`get_preference_loss`).

The step is generic over a log-prob function

  logp_fn(params, batch) -> PairLogProbs(chosen_logp_B, rejected_logp_B, chosen_len_B,
                                         rejected_len_B)

so the same update runs with a causal language model (`make_lm_logp_fn`: ONE forward pass over the
2B concatenated [chosen; rejected] rows of `data.batching.pad_preference_pairs`, temperature 1,
optionally vocabulary-chunked) and with a tabular softmax policy in the bandit test.

Shape letters: B pairs, L padded row length, R rows of any count (2B in the pair layout),
M micro-batches.

Batch layout (a dict of arrays; B pairs, 2B rows, L padded row length):

  tokens_2BxL, positions_2BxL,   rows [0, B) are prompt + chosen, rows [B, 2B) prompt + rejected
  segment_ids_2BxL,              (1 real token, 0 padding)
  loss_mask_2BxL                 1 on response tokens (the log-prob targets)
  weight_B                       per-pair weight (0 drops a pair, e.g. a tie)
  ref_chosen_logp_B,             OPTIONAL precomputed reference log-probs (`reference_logprobs`);
  ref_rejected_logp_B            present exactly when the step is called without reference params

Reference handling: `step(state, batch, key, ref_params)` computes the reference log-probs in the
step from frozen `ref_params` (a plain pytree, never donated, never optimised) when they are given,
otherwise reads them from the batch (precomputed once over the dataset). Reference-free losses
(SimPO, ORPO) skip the reference pass altogether. Either way the reference log-probs enter the
loss through the same batch fields, so the two modes run the same arithmetic.

Gradient accumulation uses the protocol of `optimizer.accumulated_value_and_grad` with the
pair-weight sum as denominator: loss_sum = (weighted-mean loss) x (sum of weights) per
micro-batch, so the accumulated loss is exactly the full-batch weighted mean.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from rlhf_jax import losses, sharding
from rlhf_jax.algorithms import optimizer as optimizer_lib
from rlhf_jax.algorithms import train_state as train_state_lib
from rlhf_jax.data import batching
from rlhf_jax.models import transformer
from rlhf_jax.ops import logprobs as logprobs_lib
from rlhf_jax.ops import masked

PyTree = Any
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
REF_FIELDS = ("ref_chosen_logp_B", "ref_rejected_logp_B")
ROW_FIELDS = ("tokens_2BxL", "positions_2BxL", "segment_ids_2BxL", "loss_mask_2BxL")


class PairLogProbs(NamedTuple):
  """Summed response log-probs and response lengths (tokens) of B preference pairs."""

  chosen_logp_B: jax.Array
  rejected_logp_B: jax.Array
  chosen_len_B: jax.Array
  rejected_len_B: jax.Array


LogpFn = Callable[[PyTree, Batch], PairLogProbs]


def summed_response_logprobs(params: PyTree, tokens_RxL: jax.Array, positions_RxL: jax.Array,
                             segment_ids_RxL: jax.Array, loss_mask_RxL: jax.Array, *,
                             model: nn.Module, chunked: bool = False, chunk_size: int = 8192
                             ) -> tuple[jax.Array, jax.Array]:
  """sum_t log pi(y_t | y_<t) over the response tokens of each row, at temperature 1.

  Args:
    params: CausalLM parameters.
    tokens_RxL, positions_RxL, segment_ids_RxL: right-padded rows (R of them).
    loss_mask_RxL: 1 on the tokens whose log-prob is summed (the response).
    model: the CausalLM.
    chunked: compute log-probs from the final hidden state and the unembedding matrix over
      vocabulary chunks (`ops.logprobs.chunked_token_logprobs`), never materialising [R, L, V].
    chunk_size: vocabulary columns per chunk on the chunked path.

  Returns:
    (logp_R, num_tokens_R): float32 summed log-probs and the number of summed tokens.
  """
  out = model.apply({"params": params}, tokens_RxL, positions_RxL, segment_ids_RxL,
                    return_logits=not chunked)
  if chunked:
    hidden, targets, mask = logprobs_lib.shift_for_next_token(out.hidden, tokens_RxL,
                                                              loss_mask_RxL)
    unembed_DxV = transformer.unembedding_matrix(params, model.config)
    logp_RxL = logprobs_lib.chunked_token_logprobs(hidden, unembed_DxV, targets, temperature=1.0,
                                                   chunk_size=chunk_size)
  else:
    logits, targets, mask = logprobs_lib.shift_for_next_token(out.logits, tokens_RxL,
                                                              loss_mask_RxL)
    logp_RxL = logprobs_lib.token_logprobs(logits, targets, temperature=1.0)
  logp_RxL = logp_RxL.astype(jnp.float32)
  return masked.masked_sum(logp_RxL, mask, axis=1), jnp.sum(mask.astype(jnp.float32), axis=1)


def make_lm_logp_fn(model: nn.Module, *, chunked: bool = False,
                    chunk_size: int = 8192) -> LogpFn:
  """The log-prob function of a CausalLM over the concatenated [chosen; rejected] rows."""

  def logp_fn(params: PyTree, batch: Batch) -> PairLogProbs:
    tokens = batch["tokens_2BxL"]
    if tokens.shape[0] % 2:
      raise ValueError(f"tokens_2BxL has {tokens.shape[0]} rows; the [chosen; rejected] layout "
                       "needs an even number")
    logp_2B, len_2B = summed_response_logprobs(
        params, tokens, batch["positions_2BxL"], batch["segment_ids_2BxL"],
        batch["loss_mask_2BxL"], model=model, chunked=chunked, chunk_size=chunk_size)
    num_pairs = tokens.shape[0] // 2
    return PairLogProbs(logp_2B[:num_pairs], logp_2B[num_pairs:], len_2B[:num_pairs],
                        len_2B[num_pairs:])

  return logp_fn


def _pair_batch(batch: Batch, num_micro_batches: int) -> Batch:
  """Splits a batch into [M, ...] micro-batches (rows and pairs stay matched, see below)."""
  # `split_micro_batches` sends row i to micro-batch i % M. Chosen row b and rejected row B + b
  # land in the same micro-batch (B is a multiple of M), in the same order as pair b.
  return optimizer_lib.split_micro_batches(batch, num_micro_batches)


def _merge_micro_batches(x_MxBm: jax.Array) -> jax.Array:
  """Inverse of the strided split for a per-pair array: [M, B / M] -> [B]."""
  return jnp.swapaxes(x_MxBm, 0, 1).reshape(-1)


def reference_pair_logprobs(ref_params: PyTree, batch: Batch, *, logp_fn: LogpFn,
                            num_micro_batches: int = 1,
                            compute_dtype: Any = None) -> tuple[jax.Array, jax.Array]:
  """Summed reference log-probs (chosen_B, rejected_B), without gradient.

  With several micro-batches the forward passes run one micro-batch at a time (`lax.map`), so the
  reference pass never holds more activations than one micro-batch of the policy pass.
  """
  if compute_dtype is not None:
    ref_params = optimizer_lib.cast_params(ref_params, compute_dtype)
  rows = {k: v for k, v in batch.items() if k not in REF_FIELDS}
  if num_micro_batches == 1:
    out = logp_fn(ref_params, rows)
    chosen_B, rejected_B = out.chosen_logp_B, out.rejected_logp_B
  else:
    out = jax.lax.map(lambda b: logp_fn(ref_params, b)[:2], _pair_batch(rows, num_micro_batches))
    chosen_B, rejected_B = (_merge_micro_batches(x) for x in out)
  return jax.lax.stop_gradient(chosen_B), jax.lax.stop_gradient(rejected_B)


def pair_objective(params: PyTree, batch: Batch, key: Optional[jax.Array] = None, *,
                   logp_fn: LogpFn, preference_loss: losses.dpo.PreferenceLoss,
                   reference_free: bool) -> tuple[jax.Array, tuple[jax.Array, Metrics]]:
  """The preference loss of one micro-batch in the accumulation protocol.

  Returns (loss x sum(weight_B), (sum(weight_B), metrics)) where loss is the weighted mean over
  pairs computed by `preference_loss` (see the module docstring for why).
  """
  del key  # The objective is deterministic.
  policy = logp_fn(params, batch)
  ref_chosen = None if reference_free else batch["ref_chosen_logp_B"]
  ref_rejected = None if reference_free else batch["ref_rejected_logp_B"]
  weight_B = batch["weight_B"].astype(jnp.float32)
  loss, metrics = preference_loss(
      policy.chosen_logp_B, policy.rejected_logp_B, ref_chosen, ref_rejected, weights_B=weight_B,
      chosen_len_B=policy.chosen_len_B, rejected_len_B=policy.rejected_len_B)
  total_weight = jnp.sum(weight_B)
  safe_weight = jnp.where(total_weight > 0, total_weight, 1.0)

  def weighted_mean(x_B):
    return jnp.sum(weight_B * jax.lax.stop_gradient(x_B)) / safe_weight

  metrics = dict(metrics)
  metrics["loss/preference"] = loss
  metrics["lengths/chosen"] = weighted_mean(policy.chosen_len_B)
  metrics["lengths/rejected"] = weighted_mean(policy.rejected_len_B)
  if not reference_free:
    metrics["logps/ref_chosen"] = weighted_mean(ref_chosen)
    metrics["logps/ref_rejected"] = weighted_mean(ref_rejected)
  return loss * total_weight, (total_weight, metrics)


def with_reference(batch: Batch, ref_params: Optional[PyTree], *, loss_name: str,
                   logp_fn: LogpFn, num_micro_batches: int = 1,
                   compute_dtype: Any = None) -> dict[str, jax.Array]:
  """The batch with `REF_FIELDS` filled in as the loss needs (the reference rules above).

  In-step (ref_params given): computes them. Precomputed (ref_params None): checks they are in the
  batch. Reference-free losses: drops them and never runs the reference.

  Raises:
    ValueError: naming the fields when the reference is missing, given twice or given in part.
  """
  has_precomputed = all(f in batch for f in REF_FIELDS)
  if any(f in batch for f in REF_FIELDS) and not has_precomputed:
    raise ValueError(f"batch has only some of the precomputed reference fields {REF_FIELDS}")
  batch = dict(batch)
  if loss_name in losses.REFERENCE_FREE_LOSSES:
    for field in REF_FIELDS:  # No reference pass; precomputed values are not needed either.
      batch.pop(field, None)
  elif ref_params is not None:
    if has_precomputed:
      raise ValueError("both ref_params and precomputed reference log-probs "
                       f"{REF_FIELDS} were given; pass exactly one")
    batch[REF_FIELDS[0]], batch[REF_FIELDS[1]] = reference_pair_logprobs(
        ref_params, batch, logp_fn=logp_fn, num_micro_batches=num_micro_batches,
        compute_dtype=compute_dtype)
  elif not has_precomputed:
    raise ValueError(f"loss {loss_name!r} needs reference log-probs: pass ref_params (in-step "
                     f"reference) or batch fields {REF_FIELDS} (precomputed, see "
                     "rlhf_jax.algorithms.reference_logprobs)")
  return batch


def pair_metrics(params: PyTree, batch: Batch, ref_params: Optional[PyTree] = None, *,
                 logp_fn: LogpFn, loss_name: str, loss_hparams: Mapping[str, float],
                 compute_dtype: Any = None) -> tuple[jax.Array, Metrics]:
  """Evaluation without an update: (sum of pair weights, weighted-mean metrics) of one batch.

  Combine batches on the host as sum_j w_j m_j / sum_j w_j.
  """
  batch = with_reference(batch, ref_params, loss_name=loss_name, logp_fn=logp_fn,
                         compute_dtype=compute_dtype)
  if compute_dtype is not None:
    params = optimizer_lib.cast_params(params, compute_dtype)
  preference_loss = functools.partial(losses.get_preference_loss(loss_name), **loss_hparams)
  _, (weight, metrics) = pair_objective(
      params, batch, logp_fn=logp_fn, preference_loss=preference_loss,
      reference_free=loss_name in losses.REFERENCE_FREE_LOSSES)
  return weight, metrics


def dpo_step(state: train_state_lib.TrainState, batch: Batch, key: jax.Array,
             ref_params: Optional[PyTree] = None, *, logp_fn: LogpFn, loss_name: str,
             loss_hparams: Mapping[str, float], tx: optax.GradientTransformation,
             num_micro_batches: int = 1, compute_dtype: Any = None,
             schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
             ) -> tuple[train_state_lib.TrainState, Metrics]:
  """One optimiser update of a DPO-family loss (bind the statics with `make_dpo_step`).

  Args:
    state: the policy's TrainState (donated by `jit_dpo_step`).
    batch: the module docstring's layout.
    key: per-step PRNG key (unused by the objective; kept for the shared step signature).
    ref_params: frozen reference parameters for the in-step reference pass, or None when the
      batch carries precomputed `ref_chosen_logp_B` / `ref_rejected_logp_B` or the loss is
      reference-free.
    logp_fn: see `PairLogProbs`.
    loss_name: a name of `losses.get_preference_loss` ("dpo", "ipo", "simpo", ...).
    loss_hparams: its keyword hyper-parameters (e.g. {"beta": 0.1}).
    tx: the optimiser.
    num_micro_batches: gradient-accumulation passes per step.
    compute_dtype: dtype of the forward/backward pass (master parameters stay float32).
    schedule_fn: learning-rate schedule, reported as "optim/lr".

  Returns:
    (new state, metrics): "loss/total", the loss function's metrics (rewards/*, logps/*),
    "loss/preference", "lengths/*", "logps/ref_*", "optim/grad_norm", "optim/lr".
  """
  preference_loss = functools.partial(losses.get_preference_loss(loss_name), **loss_hparams)
  reference_free = loss_name in losses.REFERENCE_FREE_LOSSES
  batch = with_reference(batch, ref_params, loss_name=loss_name, logp_fn=logp_fn,
                         num_micro_batches=num_micro_batches, compute_dtype=compute_dtype)
  objective = functools.partial(pair_objective, logp_fn=logp_fn, preference_loss=preference_loss,
                                reference_free=reference_free)
  return train_state_lib.train_step(state, batch, key, loss_fn=objective, tx=tx,
                                    num_micro_batches=num_micro_batches,
                                    compute_dtype=compute_dtype, schedule_fn=schedule_fn)


def make_dpo_step(logp_fn: LogpFn, loss_name: str, loss_hparams: Mapping[str, float],
                  tx: optax.GradientTransformation, *, num_micro_batches: int = 1,
                  compute_dtype: Any = None,
                  schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None
                  ) -> Callable[..., tuple[train_state_lib.TrainState, Metrics]]:
  """`dpo_step` with its statics bound: `step(state, batch, key, ref_params_or_none)`."""
  losses.get_preference_loss(loss_name)  # Unknown names fail here, before tracing.
  return functools.partial(dpo_step, logp_fn=logp_fn, loss_name=loss_name,
                           loss_hparams=dict(loss_hparams), tx=tx,
                           num_micro_batches=num_micro_batches, compute_dtype=compute_dtype,
                           schedule_fn=schedule_fn)


def jit_dpo_step(step_fn: Callable[..., Any], state_shardings: train_state_lib.TrainState,
                 batch_shardings: PyTree, mesh: Mesh, ref_shardings: Optional[PyTree] = None
                 ) -> Callable[..., Any]:
  """Jits `step(state, batch, key, ref_params)` once with explicit shardings.

  The state is donated; the reference parameters are not (they are reused every step). Pass
  `ref_shardings=None` for steps called with `ref_params=None` (precomputed or reference-free).
  """
  replicated = sharding.replicated(mesh)
  return jax.jit(step_fn,
                 in_shardings=(state_shardings, batch_shardings, replicated, ref_shardings),
                 out_shardings=(state_shardings, replicated), donate_argnames=("state",))


def host_batch(pairs: batching.PreferenceBatch, *, tie_weight: float = 0.0,
               ref_chosen_logp_B: Optional[np.ndarray] = None,
               ref_rejected_logp_B: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
  """The step's batch dict from a collated `PreferenceBatch` (NumPy, host side).

  weight_B = record weight x (tie_weight for ties, else 1): a tie carries no preference
  direction, so by default it is dropped from the loss (weight 0) while keeping the batch shape.
  """
  if (ref_chosen_logp_B is None) != (ref_rejected_logp_B is None):
    raise ValueError("give both ref_chosen_logp_B and ref_rejected_logp_B, or neither")
  rows = pairs.rows
  weight_B = pairs.weight_B * np.where(pairs.tie_B, np.float32(tie_weight), np.float32(1.0))
  out = {"tokens_2BxL": rows.tokens_BxL, "positions_2BxL": rows.positions_BxL,
         "segment_ids_2BxL": rows.segment_ids_BxL, "loss_mask_2BxL": rows.loss_mask_BxL,
         "weight_B": weight_B.astype(np.float32)}
  if ref_chosen_logp_B is not None:
    for name, value in zip(REF_FIELDS, (ref_chosen_logp_B, ref_rejected_logp_B)):
      value = np.asarray(value, np.float32)
      if value.shape != weight_B.shape:
        raise ValueError(f"{name} has shape {value.shape}, expected {weight_B.shape}")
      out[name] = value
  return out


def collate_dpo(examples: list[Mapping[str, Any]], *, buckets: tuple[int, ...], pad_id: int,
                tie_weight: float = 0.0, reference: Optional[Any] = None) -> dict[str, np.ndarray]:
  """Batch function for tokenised preference records (e.g. `data.loader.make_loader(batch_fn=)`).

  With `reference` (a `reference_logprobs.ReferenceLogProbs`) the precomputed reference log-probs
  of each record are looked up by its "id" and added as `REF_FIELDS`.
  """
  pairs = batching.collate_preferences(examples, buckets=buckets, pad_id=pad_id)
  if reference is None:
    return host_batch(pairs, tie_weight=tie_weight)
  ids = []
  for i, example in enumerate(examples):
    if "id" not in example:
      raise KeyError(f"preference record #{i} of the batch has no 'id', needed to look up its "
                     "precomputed reference log-probs")
    ids.append(str(example["id"]))
  chosen_B, rejected_B = reference.lookup(ids)
  return host_batch(pairs, tie_weight=tie_weight, ref_chosen_logp_B=chosen_B,
                    ref_rejected_logp_B=rejected_B)
