"""Reward model (RM): the Bradley-Terry (BT) objective's batch layout, loss and jitted step.

The RM is the decoder trunk with a scalar head (`models.ScalarModel`), its reward read at the last
real token of prompt + response. It is fitted by the BT negative log-likelihood of pairwise
preferences (`losses.bradley_terry_loss`: margins, label smoothing, per-pair weights, ties and
reward centering), one optimiser update per global batch with gradient accumulation. This module
holds the pure and jitted parts; the host-side run (config validation, data sources, the training
loop, evaluation, calibration and export) is `reward_model_train.train_reward_model`.

Device batch layout (`RewardBatch`): pair-major [B, 2, L] arrays, index 0 the prompt + chosen row
and 1 the prompt + rejected row. The loss flattens them to 2B rows (pair b -> rows 2b, 2b + 1)
for ONE forward pass over all chosen and rejected rows. This is the [chosen; rejected]
concatenation of `data.batching.PreferenceBatch` up to a row permutation, chosen so that every
leaf has the pair dimension B in front: micro-batch splitting and data-parallel sharding then
never separate a pair from its weight or from each other. The per-pair weight, margin and tie
flag come from the `PreferenceBatch` (i.e. from the data's "weight", "confidence", "margin" and
"tie" fields); the `loss` config decides which of them enter the loss.

Weights and the accumulation protocol. The loss is

  L = sum_b w_b l_b / sum_b w_b + c * mean_b (r_c,b + r_r,b)^2

over the GLOBAL batch. The step first rescales the weights to mean 1 over the global batch, so
sum_b w_b = B and both terms share the denominator B (the number of pairs); each micro-batch j
then returns (sum_{b in j} w_b l_b + c * sum_{b in j} (r_c,b + r_r,b)^2, B_j) and the accumulated
loss equals L exactly, however the pairs are spread over micro-batches.

Shape letters: B pairs, L padded row length, N scored rows.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.algorithms import train_state as train_state_lib
from rlhf_jax.data import batching
from rlhf_jax.losses import reward_model as rm_loss

PyTree = Any
# score_fn(params, tokens_NxL, positions_NxL, segment_ids_NxL, read_index_N) -> score_N (float32)
ScoreFn = Callable[[PyTree, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


class RewardBatch(NamedTuple):
  """Preference pairs on device, pair-major (module docstring). Index 1 of axis 1: 0 chosen,
  1 rejected."""
  tokens_Bx2xL: Any  # int32, pad id on padding
  positions_Bx2xL: Any  # int32, 0, 1, ... on real tokens
  segment_ids_Bx2xL: Any  # int32, 1 real token, 0 padding
  last_index_Bx2: Any  # int32 column of the last real token (where the reward is read)
  weight_B: Any  # float32 per-pair loss weight (annotator aggregation), >= 0
  margin_B: Any  # float32 per-pair preference-strength margin (0 when not given)
  tie_B: Any  # bool, the pair was rated a tie


def reward_batch_from_preferences(batch: batching.PreferenceBatch,
                                  margin_B: Optional[np.ndarray] = None,
                                  use_confidence: bool = False) -> RewardBatch:
  """Host `PreferenceBatch` (2B rows, [chosen; rejected]) -> pair-major `RewardBatch`.

  Args:
    batch: pairs from `data.batching.collate_preferences` (or any `PreferenceBatch`).
    margin_B: per-pair margins [B] replacing the batch's; default (None) `batch.margin_B`, the
      data's own "margin" field (0 where a record has none). They enter the loss only with
      `loss.use_margin`.
    use_confidence: multiply the pair weight `batch.weight_B` by `batch.confidence_B` (e.g. a
      Dawid-Skene posterior probability that the label is right).

  Returns:
    The pair-major batch (NumPy arrays).

  Raises:
    ValueError: the rows are not 2 per pair, a weight is negative or not finite, or `margin_B`
      does not have shape [B].
  """
  rows = batch.rows
  num_pairs = batch.weight_B.shape[0]
  if rows.tokens_BxL.shape[0] != 2 * num_pairs:
    raise ValueError(f"PreferenceBatch has {rows.tokens_BxL.shape[0]} rows for {num_pairs} pairs; "
                     "expected [chosen; rejected] = 2 rows per pair")

  def pair_major(x):
    x = np.asarray(x)
    return np.stack([x[:num_pairs], x[num_pairs:]], axis=1)

  weight_B = np.asarray(batch.weight_B, np.float32)
  if use_confidence:
    weight_B = weight_B * np.asarray(batch.confidence_B, np.float32)
  if np.any(weight_B < 0) or not np.all(np.isfinite(weight_B)):
    raise ValueError(f"pair weights must be finite and >= 0, got {weight_B.tolist()}")
  margin_B = np.asarray(batch.margin_B if margin_B is None else margin_B, np.float32)
  if margin_B.shape != (num_pairs,):
    raise ValueError(f"margin_B has shape {margin_B.shape}, expected ({num_pairs},)")
  return RewardBatch(
      tokens_Bx2xL=pair_major(rows.tokens_BxL), positions_Bx2xL=pair_major(rows.positions_BxL),
      segment_ids_Bx2xL=pair_major(rows.segment_ids_BxL),
      last_index_Bx2=pair_major(rows.last_index_B), weight_B=weight_B, margin_B=margin_B,
      tie_B=np.asarray(batch.tie_B, np.bool_))


def collate_reward_batch(examples: Sequence[Mapping[str, Any]], *, buckets: Sequence[int],
                         pad_id: int, use_confidence: bool = False) -> RewardBatch:
  """Batch function over tokenised preference records.

  Each record has "prompt_ids", "chosen_ids", "rejected_ids" and optionally "weight",
  "confidence", "tie" and "margin" (None or absent: the defaults of
  `batching.collate_preferences`, margin 0).
  """
  return reward_batch_from_preferences(
      batching.collate_preferences(examples, buckets=buckets, pad_id=pad_id),
      use_confidence=use_confidence)


def make_score_fn(model: Any) -> ScoreFn:
  """`score_fn(params, tokens, positions, segment_ids, read_index) -> score_N` of a ScalarModel."""
  def score_fn(params, tokens_NxL, positions_NxL, segment_ids_NxL, read_index_N):
    _, score_N = model.apply({"params": params}, tokens_NxL, positions_NxL, segment_ids_NxL,
                             read_index_N)
    return score_N.astype(jnp.float32)
  return score_fn


def pair_scores(score_fn: ScoreFn, params: PyTree, batch: RewardBatch) -> jax.Array:
  """Rewards [B, 2] (chosen, rejected) from ONE forward pass over the 2B flattened rows."""
  num_pairs = batch.tokens_Bx2xL.shape[0]
  flat = lambda x: x.reshape((2 * num_pairs,) + x.shape[2:])  # noqa: E731  (pair b -> 2b, 2b+1)
  score_N = score_fn(params, flat(batch.tokens_Bx2xL), flat(batch.positions_Bx2xL),
                     flat(batch.segment_ids_Bx2xL), flat(batch.last_index_Bx2))
  return score_N.reshape(num_pairs, 2)


def reward_model_loss(params: PyTree, batch: RewardBatch, key: Optional[jax.Array] = None, *,
                      score_fn: ScoreFn, label_smoothing: float = 0.0, center_coef: float = 0.0,
                      use_margin: bool = False, use_weights: bool = True, use_ties: bool = True
                      ) -> tuple[jax.Array, tuple[jax.Array, dict[str, jax.Array]]]:
  """BT loss of one micro-batch in the accumulation protocol: (loss_sum, (num_pairs, metrics)).

  `batch.weight_B` must already be rescaled to mean 1 over the global batch (`rescale_weights`);
  see the module docstring for why this makes accumulation exact.

  Args:
    params: RM parameters.
    batch: the micro-batch.
    key: unused (the forward pass is deterministic); kept for the step protocol.
    score_fn: see `make_score_fn`.
    label_smoothing, center_coef: as in `losses.bradley_terry_loss`.
    use_margin, use_weights, use_ties: whether the batch's margins, weights and tie flags enter
      the loss (off: margin 0, weight 1, every pair decided).

  Returns:
    (loss_sum, (denominator, metrics)) with denominator the number of pairs; metrics are the
    BT loss's "loss/bradley_terry", "loss/center" and "rewards/*".
  """
  del key
  r_Bx2 = pair_scores(score_fn, params, batch)
  r_c_B, r_r_B = r_Bx2[:, 0], r_Bx2[:, 1]
  num_pairs = r_c_B.shape[0]
  weight_B = batch.weight_B.astype(jnp.float32) if use_weights else jnp.ones((num_pairs,),
                                                                             jnp.float32)
  _, metrics = rm_loss.bradley_terry_loss(
      r_c_B, r_r_B, margin_B=batch.margin_B if use_margin else None,
      label_smoothing=label_smoothing, weights_B=weight_B if use_weights else None,
      tie_B=batch.tie_B if use_ties else None, center_coef=center_coef)
  # bradley_terry_loss returns the weighted MEAN; times sum(w) gives the micro-batch's weighted SUM.
  loss_sum = (metrics["loss/bradley_terry"] * jnp.sum(weight_B)
              + center_coef * metrics["loss/center"] * num_pairs)
  metrics = {k: v for k, v in metrics.items() if k != "loss"}
  return loss_sum, (jnp.asarray(num_pairs, jnp.float32), metrics)


def rescale_weights(batch: RewardBatch) -> RewardBatch:
  """Weights divided by their mean over the (global) batch: sum_b w_b = B afterwards."""
  weight_B = batch.weight_B.astype(jnp.float32)
  mean = jnp.maximum(jnp.mean(weight_B), jnp.finfo(jnp.float32).tiny)
  return batch._replace(weight_B=weight_B / mean)


def reward_model_step(state: train_state_lib.TrainState, batch: RewardBatch, key: jax.Array, *,
                      loss_fn: Callable[..., Any], tx: optax.GradientTransformation,
                      num_micro_batches: int = 1, compute_dtype: Any = None,
                      schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None
                      ) -> tuple[train_state_lib.TrainState, dict[str, jax.Array]]:
  """One optimiser update of the RM: rescale weights, accumulate over micro-batches, apply.

  Metrics: "loss/total" (the global-batch objective), "loss/bradley_terry", "loss/center",
  "rewards/{accuracy,margin,chosen,rejected,std}", "optim/grad_norm", "optim/lr".
  """
  return train_state_lib.train_step(state, rescale_weights(batch), key, loss_fn=loss_fn, tx=tx,
                                    num_micro_batches=num_micro_batches,
                                    compute_dtype=compute_dtype, schedule_fn=schedule_fn)


def make_loss_fn(score_fn: ScoreFn, loss_config: Any) -> Callable[..., Any]:
  """`reward_model_loss` with the `loss` config section's fields bound."""
  return functools.partial(
      reward_model_loss, score_fn=score_fn, label_smoothing=float(loss_config.label_smoothing),
      center_coef=float(loss_config.center_coef), use_margin=bool(loss_config.use_margin),
      use_weights=bool(loss_config.use_weights), use_ties=bool(loss_config.use_ties))


def make_step(loss_fn: Callable[..., Any], tx: optax.GradientTransformation, *,
              state_shardings: Any, batch_shardings: Any, mesh: jax.sharding.Mesh,
              num_micro_batches: int = 1, compute_dtype: Any = None,
              schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None) -> Callable[..., Any]:
  """The jitted `step(state, batch, key) -> (state, metrics)`, state donated, shardings explicit."""
  step = functools.partial(reward_model_step, loss_fn=loss_fn, tx=tx,
                           num_micro_batches=num_micro_batches, compute_dtype=compute_dtype,
                           schedule_fn=schedule_fn)
  return train_state_lib.jit_train_step(step, state_shardings, batch_shardings, mesh)


def batch_shardings(mesh: jax.sharding.Mesh) -> RewardBatch:
  """Shardings of a `RewardBatch`: the pair dimension over the data-parallel axes."""
  example = RewardBatch(*(np.zeros((1,) * n) for n in (3, 3, 3, 2, 1, 1, 1)))
  return train_state_lib.batch_shardings_for(example, mesh)


def make_pair_scorer(score_fn: ScoreFn) -> Callable[[PyTree, RewardBatch], jax.Array]:
  """Jitted `(params, batch) -> rewards [B, 2]` for held-out evaluation."""
  return jax.jit(functools.partial(pair_scores, score_fn))
