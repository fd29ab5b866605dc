"""TensorFlow-style Adam, the optimiser of OpenAI's lm-human-preferences (PPO_DETAILS item 18).

TF1's `AdamOptimizer` folds the bias corrections into the step size and adds epsilon to the RAW
second-moment root:

  m_t = b1 m + (1 - b1) g,   v_t = b2 v + (1 - b2) g^2
  update = -lr * sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps)          (TF1)
         = -lr * m_hat / (sqrt(v_hat) + eps / sqrt(1 - b2^t))

PyTorch's (and optax's) Adam adds eps to sqrt(v_hat) instead, so the two differ early in training,
when sqrt(1 - b2^t) is small (Huang et al. 2023, "The N Implementation Details of RLHF with PPO").
`make_optimizer` builds the same chain as `rlhf_jax.algorithms.optimizer.make_optimizer` (global-norm
clipping, Adam, masked decoupled weight decay, learning-rate schedule) with the Adam form chosen by
`optimizer.adam_form` ("pytorch", the default, or "tensorflow").
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from rlhf_jax.algorithms import optimizer as optimizer_lib

ADAM_FORMS = ("pytorch", "tensorflow")


def scale_by_tf_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """The TF1 Adam direction (module docstring), without the learning rate (chain `scale_by_learning_rate`)."""

  def init(params):
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params)
    return optax.ScaleByAdamState(count=jnp.zeros((), jnp.int32), mu=zeros, nu=jax.tree.map(jnp.copy, zeros))

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
    count = state.count + 1
    t = count.astype(jnp.float32)
    step = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    out = jax.tree.map(lambda m, v, g: (step * m / (jnp.sqrt(v) + eps)).astype(g.dtype), mu, nu, updates)
    return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init, update)


def make_optimizer(cfg: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, Callable[[jax.Array], jax.Array]]:
  """`optimizer.make_optimizer`, or the same chain with TF-style Adam when cfg.adam_form == "tensorflow"."""
  form = cfg.get("adam_form", "pytorch")
  if form not in ADAM_FORMS:
    raise ValueError(f"optimizer.adam_form must be one of {ADAM_FORMS}, got {form!r}")
  if form == "pytorch":
    return optimizer_lib.make_optimizer(cfg)
  optimizer_lib.validate_optimizer_config(cfg)
  schedule = optimizer_lib.make_schedule(cfg.lr, cfg.warmup_steps, cfg.decay, cfg.total_steps, cfg.end_lr_ratio)
  mask = functools.partial(optimizer_lib.decay_mask, no_decay_patterns=tuple(cfg.no_decay_patterns))
  parts = [scale_by_tf_adam(cfg.b1, cfg.b2, cfg.eps), optax.add_decayed_weights(cfg.weight_decay, mask),
           optax.scale_by_learning_rate(schedule)]
  if cfg.grad_clip_norm and cfg.grad_clip_norm > 0:
    parts.insert(0, optax.clip_by_global_norm(cfg.grad_clip_norm))
  return optax.chain(*parts), schedule
