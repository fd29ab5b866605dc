"""Optimiser: AdamW with warm-up and decay, global-norm clipping, weight-decay masks, mixed precision.

AdamW = Adam with decoupled weight decay (Loshchilov & Hutter, 2019, arXiv:1711.05101).

Everything an algorithm needs to turn gradients into updates, configured by one ConfigDict section
(`optimizer_config_defaults`) that every experiment config embeds:

  tx, schedule_fn = make_optimizer(config.optimizer)

Also here: gradient accumulation over micro-batches inside one jitted step
(`accumulated_value_and_grad`), and the float32-master / low-precision-compute cast
(`cast_params`).
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

PyTree = Any
Metrics = Mapping[str, jax.Array]
DECAYS = ("cosine", "linear", "constant")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def optimizer_config_defaults() -> ml_collections.ConfigDict:
  """The `optimizer` config section, documented field by field."""
  cfg = ml_collections.ConfigDict()
  cfg.lr = 3e-4  # peak learning rate, reached at the end of warm-up
  cfg.warmup_steps = 100  # optimiser steps of linear warm-up from 0 to `lr` (0: start at `lr`)
  cfg.decay = "cosine"  # after warm-up: "cosine" | "linear" to lr * end_lr_ratio, or "constant"
  cfg.total_steps = 10_000  # optimiser step at which the decay reaches lr * end_lr_ratio
  cfg.end_lr_ratio = 0.1  # final learning rate as a fraction of `lr` (cosine and linear)
  cfg.b1 = 0.9  # Adam first-moment decay
  cfg.b2 = 0.95  # Adam second-moment decay
  cfg.eps = 1e-8  # Adam denominator epsilon
  cfg.weight_decay = 0.1  # decoupled weight decay coefficient (multiplied by the learning rate)
  # Parameters whose path matches any of these regular expressions (searched in the
  # "/"-joined path, case-insensitive) get no weight decay; neither do leaves with ndim < 2.
  cfg.no_decay_patterns = ("bias", "norm", "scale")
  cfg.grad_clip_norm = 1.0  # clip gradients to this global L2 norm before Adam (<= 0: off)
  # dtype parameters are cast to for the forward/backward pass ("float32" | "bfloat16" |
  # "float16"); master parameters, gradients and optimiser state stay float32.
  cfg.compute_dtype = "float32"
  return cfg


def validate_optimizer_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the offending `optimizer.*` field."""
  if cfg.decay not in DECAYS:
    raise ValueError(f"optimizer.decay must be one of {DECAYS}, got {cfg.decay!r}")
  if not cfg.lr >= 0:
    raise ValueError(f"optimizer.lr must be >= 0, got {cfg.lr}")
  if cfg.warmup_steps < 0:
    raise ValueError(f"optimizer.warmup_steps must be >= 0, got {cfg.warmup_steps}")
  if cfg.decay != "constant" and cfg.total_steps <= cfg.warmup_steps:
    raise ValueError(f"optimizer.total_steps ({cfg.total_steps}) must exceed "
                     f"optimizer.warmup_steps ({cfg.warmup_steps}) for {cfg.decay} decay")
  if not 0.0 <= cfg.end_lr_ratio <= 1.0:
    raise ValueError(f"optimizer.end_lr_ratio must lie in [0, 1], got {cfg.end_lr_ratio}")
  for name in ("b1", "b2"):
    if not 0.0 <= cfg[name] < 1.0:
      raise ValueError(f"optimizer.{name} must lie in [0, 1), got {cfg[name]}")
  if cfg.eps < 0 or cfg.weight_decay < 0:
    raise ValueError(f"optimizer.eps and optimizer.weight_decay must be >= 0, "
                     f"got {cfg.eps} and {cfg.weight_decay}")
  if cfg.compute_dtype not in _DTYPES:
    raise ValueError(f"optimizer.compute_dtype must be one of {sorted(_DTYPES)}, "
                     f"got {cfg.compute_dtype!r}")


def make_schedule(lr: float, warmup_steps: int, decay: str, total_steps: int,
                  end_lr_ratio: float) -> Callable[[jax.Array], jax.Array]:
  """Learning rate as a function of the optimiser step (the count of updates applied so far).

    step < W:      lr * step / W                                   (linear warm-up from 0)
    step >= W:     p = clip((step - W) / (T - W), 0, 1), end = lr * end_lr_ratio
      cosine:      end + (lr - end) * (1 + cos(pi * p)) / 2
      linear:      lr + (end - lr) * p
      constant:    lr
  """
  if decay not in DECAYS:
    raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
  end_lr = lr * end_lr_ratio
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(step: jax.Array) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    warm = lr * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    if decay == "cosine":
      decayed = end_lr + (lr - end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    elif decay == "linear":
      decayed = lr + (end_lr - lr) * progress
    else:
      decayed = jnp.full_like(progress, lr)
    return jnp.where(step < warmup_steps, warm, decayed)

  return schedule


def decay_mask(params: PyTree, no_decay_patterns: Sequence[str] = ("bias", "norm", "scale")
               ) -> PyTree:
  """Tree of bools: True where weight decay applies.

  A leaf is decayed when it has at least 2 dimensions (matrices, embeddings, conv kernels) AND
  no pattern of `no_decay_patterns` matches its "/"-joined path (e.g. "layers/attn_norm/scale").
  The path test catches norm scales and biases that gained a leading axis from `nn.scan`.
  """
  compiled = [re.compile(p, re.IGNORECASE) for p in no_decay_patterns]

  def keep(path, leaf) -> bool:
    name = "/".join(_key_name(k) for k in path)
    return jnp.ndim(leaf) >= 2 and not any(p.search(name) for p in compiled)

  return jax.tree_util.tree_map_with_path(keep, params)


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def make_optimizer(cfg: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
  """Builds `clip_by_global_norm -> AdamW(schedule, masked weight decay)` from the config section.

  Returns:
    (tx, schedule_fn): the optax transformation and the learning-rate schedule (for metrics).
  """
  validate_optimizer_config(cfg)
  schedule = make_schedule(cfg.lr, cfg.warmup_steps, cfg.decay, cfg.total_steps,
                           cfg.end_lr_ratio)
  mask = functools.partial(decay_mask, no_decay_patterns=tuple(cfg.no_decay_patterns))
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=mask)
  if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw), schedule
  return adamw, schedule


def compute_dtype_of(name: str) -> Any:
  """Maps a config dtype name ("float32", "bfloat16", "float16") to the jnp dtype."""
  if name not in _DTYPES:
    raise ValueError(f"compute dtype must be one of {sorted(_DTYPES)}, got {name!r}")
  return _DTYPES[name]


def cast_params(params: PyTree, dtype: Any) -> PyTree:
  """Casts the floating-point leaves of `params` to `dtype` (integer leaves are left alone).

  Call it INSIDE the differentiated function on float32 master parameters: the gradient of the
  cast is a cast back, so gradients arrive in float32 although the forward pass ran in `dtype`.
  """
  if isinstance(dtype, str):
    dtype = compute_dtype_of(dtype)

  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  return jax.tree.map(cast, params)


# --------------------------------------------------------------------------------------------
# Gradient accumulation.
#
# Protocol: `loss_fn(params, batch)` (or `loss_fn(params, batch, key)` when a key is given)
# returns `(loss_sum, (denominator, metrics))` where the full-batch objective is
#     loss = sum_j loss_sum_j / sum_j denominator_j
# over micro-batches j. For a token-mean loss, loss_sum is the masked sum of per-token losses and
# denominator the number of unmasked tokens, so accumulating gives exactly the full-batch token
# mean however the tokens are spread across micro-batches. For a per-example mean use the
# example count; `mean_loss` adapts a plain `(loss_mean, metrics)` function (denominator 1 per
# micro-batch: equal weights, exact for equal-size micro-batches of per-example means).
# Metrics are combined as denominator-weighted means of the per-micro-batch values.
# --------------------------------------------------------------------------------------------


def mean_loss(loss_fn: Callable[..., tuple[jax.Array, Metrics]]) -> Callable[..., Any]:
  """Adapts `loss_fn -> (loss_mean, metrics)` to the accumulation protocol with denominator 1."""

  @functools.wraps(loss_fn)
  def wrapped(*args):
    loss, metrics = loss_fn(*args)
    return loss, (jnp.ones((), jnp.float32), metrics)

  return wrapped


def split_micro_batches(batch: PyTree, num_micro_batches: int) -> PyTree:
  """[B, ...] -> [M, B/M, ...] with micro-batch j = rows j, j+M, j+2M, ... (strided).

  The strided split keeps every micro-batch spread evenly over the data-parallel shards of the
  leading dimension, so no example moves between devices.
  """
  def split(x):
    batch_size = x.shape[0]
    if batch_size % num_micro_batches:
      raise ValueError(f"batch dimension {batch_size} (leaf shape {x.shape}) is not divisible by "
                       f"num_micro_batches={num_micro_batches}")
    x = x.reshape((batch_size // num_micro_batches, num_micro_batches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def accumulated_value_and_grad(
    loss_fn: Callable[..., tuple[jax.Array, tuple[jax.Array, Metrics]]],
    params: PyTree,
    batch: PyTree,
    num_micro_batches: int = 1,
    *,
    key: Optional[jax.Array] = None,
    compute_dtype: Any = None,
) -> tuple[tuple[jax.Array, dict[str, jax.Array]], PyTree]:
  """Loss and float32 gradient of the full batch, computed over `num_micro_batches` passes.

  The micro-batches run in a `lax.scan` inside the caller's jitted step, so memory holds one
  micro-batch of activations plus one float32 gradient accumulator.

    loss = sum_j n_j / sum_j d_j,   grad = sum_j grad(n_j) / sum_j d_j

  where (n_j, d_j) = (loss_sum, denominator) of micro-batch j (protocol in the comment above).

  Args:
    loss_fn: `(params, micro_batch[, key]) -> (loss_sum, (denominator, metrics))`.
    params: float32 master parameters.
    batch: pytree whose leaves share the leading batch dimension B (divisible by M).
    num_micro_batches: M.
    key: optional PRNG key; micro-batch j gets `fold_in(key, j)` (M == 1: `key` itself).
    compute_dtype: if set, params are cast to it (inside the differentiated function) before
      `loss_fn`; gradients still come back in the master dtype.

  Returns:
    ((loss, metrics), grads) with `metrics` the denominator-weighted mean of the micro-batch
    metrics plus "batch/loss_denominator" (sum_j d_j).
  """
  if num_micro_batches < 1:
    raise ValueError(f"num_micro_batches must be >= 1, got {num_micro_batches}")

  def numerator(p, micro_batch, micro_key):
    if compute_dtype is not None:
      p = cast_params(p, compute_dtype)
    args = (p, micro_batch) if micro_key is None else (p, micro_batch, micro_key)
    loss_sum, (denominator, metrics) = loss_fn(*args)
    return loss_sum.astype(jnp.float32), (jax.lax.stop_gradient(denominator), metrics)

  grad_fn = jax.value_and_grad(numerator, has_aux=True)

  def weighted(metrics, denominator):
    return {k: jnp.asarray(v, jnp.float32) * denominator for k, v in metrics.items()}

  if num_micro_batches == 1:
    (loss_sum, (denominator, metrics)), grads = grad_fn(params, batch, key)
    denominator = jnp.asarray(denominator, jnp.float32)
    metric_sums = weighted(metrics, denominator)
  else:
    micro_batches = split_micro_batches(batch, num_micro_batches)

    def body(carry, xs):
      index, micro_batch = xs
      micro_key = None if key is None else jax.random.fold_in(key, index)
      (loss_sum, (denominator, metrics)), grads = grad_fn(params, micro_batch, micro_key)
      denominator = jnp.asarray(denominator, jnp.float32)
      acc_grads, acc_loss, acc_den, acc_metrics = carry
      new_carry = (
          jax.tree.map(lambda a, g: a + g.astype(a.dtype), acc_grads, grads),
          acc_loss + loss_sum,
          acc_den + denominator,
          jax.tree.map(jnp.add, acc_metrics, weighted(metrics, denominator)),
      )
      return new_carry, None

    # Trace the metric structure once (abstractly) to build zero accumulators.
    first = jax.tree.map(lambda x: x[0], micro_batches)
    _, (_, metrics_shape) = jax.eval_shape(
        lambda p, b: numerator(p, b, None if key is None else key), params, first)
    zeros = (
        jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)),
                     params),
        jnp.zeros((), jnp.float32),
        jnp.zeros((), jnp.float32),
        {k: jnp.zeros(v.shape, jnp.float32) for k, v in metrics_shape.items()},
    )
    indices = jnp.arange(num_micro_batches, dtype=jnp.int32)
    (grads, loss_sum, denominator, metric_sums), _ = jax.lax.scan(
        body, zeros, (indices, micro_batches))

  safe_den = jnp.maximum(denominator, jnp.finfo(jnp.float32).tiny)
  grads = jax.tree.map(lambda g, p: (g / safe_den).astype(p.dtype), grads, params)
  metrics = {k: v / safe_den for k, v in metric_sums.items()}
  metrics["batch/loss_denominator"] = denominator
  return (loss_sum / safe_den, metrics), grads
