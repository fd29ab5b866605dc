"""Reward-model (RM) ensembles: K members trained together in ONE jitted step, vmapped over members.

Parameters of the K members are stacked on a leading axis with the logical name "members" (the
sharding rules map it to a mesh axis, replicated by default), initialised by `jax.vmap` of the
single-model init over K different keys, so the members start different.

The optimiser is vmapped too (`vmap_optimizer`): each member keeps its own Adam moments and
update count, and global-norm clipping and the weight-decay mask see ONE member's parameters, as
if each member were trained alone. (Running the plain optimiser on the stacked tree would clip by
the norm over all members jointly and decay stacked norm scales, whose ndim grew to 2.) So the
ensemble step equals K single-model steps with the same data and keys (tested to 1e-5).

Data per member (`bootstrap`):
  * False: every member sees the same global batch; members differ only by initialisation
    (the "deep ensembles" recipe, Lakshminarayanan et al. 2017).
  * True: member m sees a bootstrap resample of the batch, drawn as multinomial counts
    c_m ~ Multinomial(B, 1/B) from `fold_in(key, m)` and applied as per-pair weights
    (w_b * c_mb). For the weighted BT term this equals training on the resampled batch; the
    reward-centering term is not reweighted.

Scoring returns the mean over members as the reward and the member standard deviation as an
uncertainty (disagreement) estimate (Eisenstein et al. 2023; Coste et al. 2024).

Shape letters: M members (ensemble size), B pairs, N scored rows.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rlhf_jax import sharding
from rlhf_jax.algorithms import optimizer as optimizer_lib
from rlhf_jax.algorithms import reward_model
from rlhf_jax.algorithms import train_state as train_state_lib

PyTree = Any
MEMBERS_AXIS = "members"
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm


def _is_boxed(x: Any) -> bool:
  return isinstance(x, nn.Partitioned)


def stacked_init(init_fn: Callable[[jax.Array], Any]) -> Callable[[jax.Array], Any]:
  """`init_fn(key) -> boxed params` turned into `init(keys_M) -> boxed params stacked on axis 0`.

  Every `nn.Partitioned` leaf gains the logical axis name "members" in front.
  """
  def init(keys_M: jax.Array) -> Any:
    stacked = jax.vmap(init_fn)(keys_M)
    return jax.tree.map(lambda p: p.replace(names=(MEMBERS_AXIS,) + tuple(p.names)) if _is_boxed(p)
                        else p, stacked, is_leaf=_is_boxed)
  return init


def vmap_optimizer(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """`tx` applied independently to each member of stacked parameters (module docstring)."""
  def init(params):
    return jax.vmap(tx.init)(params)

  def update(updates, state, params=None):
    if params is None:
      return jax.vmap(lambda u, s: tx.update(u, s))(updates, state)
    return jax.vmap(tx.update)(updates, state, params)

  return optax.GradientTransformation(init, update)


def create_ensemble_state(init_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                          mesh: Mesh, rules: sharding.LogicalRules, keys_M: jax.Array
                          ) -> tuple[train_state_lib.TrainState, train_state_lib.TrainState,
                                     optax.GradientTransformation]:
  """Initialises K members directly into their shardings.

  Args:
    init_fn: `init_fn(key) -> boxed params` of ONE member (e.g. `models.init_params` of a
      ScalarModel built with the mesh and rules).
    tx: the single-member optimiser.
    mesh, rules: as for `train_state.create_train_state`.
    keys_M: one PRNG key per member (different keys give different members).

  Returns:
    (state, state_shardings, ensemble_tx): the stacked TrainState (one scalar step counter), its
    shardings, and the vmapped optimiser to step it with.
  """
  init = stacked_init(init_fn)
  ensemble_tx = vmap_optimizer(tx)
  abstract_boxed = jax.eval_shape(init, keys_M)
  param_shardings = sharding.logical_shardings(abstract_boxed, mesh, rules)
  # The vmapped state has the structure of the single-member state (vmap adds a leading axis to
  # every leaf), so the plain optimiser maps parameter shardings onto it; the other leaves
  # (per-member update counts) are replicated.
  opt_shardings = sharding.opt_state_shardings(tx, nn.unbox(abstract_boxed), param_shardings, mesh)
  shardings = train_state_lib.TrainState(step=sharding.replicated(mesh), params=param_shardings,
                                         opt_state=opt_shardings)

  def make(keys):
    params = nn.unbox(init(keys))
    return train_state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                      opt_state=ensemble_tx.init(params))

  state = jax.jit(make, out_shardings=shardings)(keys_M)
  return state, shardings, ensemble_tx


def member(tree: PyTree, m: int) -> PyTree:
  """Member m's slice of a stacked tree (parameters or optimiser state)."""
  return jax.tree.map(lambda x: x[m], tree)


def bootstrap_counts(key: jax.Array, num_members: int, num_pairs: int) -> jax.Array:
  """Multinomial(B, 1/B) resample counts [M, B] (float32); member m uses `fold_in(key, m)`."""
  def counts(m):
    draws_B = jax.random.randint(jax.random.fold_in(key, m), (num_pairs,), 0, num_pairs)
    return jnp.zeros((num_pairs,), jnp.float32).at[draws_B].add(1.0)
  return jax.vmap(counts)(jnp.arange(num_members))


def ensemble_step(state: train_state_lib.TrainState, batch: reward_model.RewardBatch,
                  key: jax.Array, *, loss_fn: Callable[..., Any],
                  tx: optax.GradientTransformation, num_micro_batches: int = 1,
                  compute_dtype: Any = None, bootstrap: bool = False,
                  schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None
                  ) -> tuple[train_state_lib.TrainState, dict[str, jax.Array]]:
  """One update of every member: vmap over members of (weights, loss + grad); then the vmapped tx.

  Member m gets the key `fold_in(key, m)` and, with `bootstrap`, its resample counts as weights.
  `tx` must be the vmapped optimiser from `create_ensemble_state`.

  Metrics: the mean over members of each single-model metric ("loss/total", "rewards/accuracy",
  "optim/grad_norm", ...), plus "loss/member_std" (spread of the members' losses) and "optim/lr".
  """
  num_members = jax.tree.leaves(state.params)[0].shape[0]
  num_pairs = batch.weight_B.shape[0]
  if bootstrap:
    weights_MxB = batch.weight_B[None, :].astype(jnp.float32) * bootstrap_counts(
        key, num_members, num_pairs)
  else:
    weights_MxB = jnp.broadcast_to(batch.weight_B[None, :].astype(jnp.float32),
                                   (num_members, num_pairs))
  keys_M = jax.vmap(lambda m: jax.random.fold_in(key, m))(jnp.arange(num_members))

  def member_grads(params, weight_B, member_key):
    member_batch = reward_model.rescale_weights(batch._replace(weight_B=weight_B))
    (loss, metrics), grads = optimizer_lib.accumulated_value_and_grad(
        loss_fn, params, member_batch, num_micro_batches, key=member_key,
        compute_dtype=compute_dtype)
    metrics = dict(metrics)
    metrics["loss/total"] = loss
    metrics["optim/grad_norm"] = _global_norm(grads)
    return metrics, grads

  metrics_M, grads = jax.vmap(member_grads)(state.params, weights_MxB, keys_M)
  metrics = {k: jnp.mean(v) for k, v in metrics_M.items()}
  metrics["loss/member_std"] = jnp.std(metrics_M["loss/total"])
  if schedule_fn is not None:
    metrics["optim/lr"] = schedule_fn(state.step)
  return train_state_lib.apply_gradients(state, grads, tx), metrics


def make_ensemble_step(loss_fn: Callable[..., Any], ensemble_tx: optax.GradientTransformation, *,
                       state_shardings: Any, batch_shardings: Any, mesh: Mesh,
                       num_micro_batches: int = 1, compute_dtype: Any = None,
                       bootstrap: bool = False,
                       schedule_fn: Optional[Callable[[jax.Array], jax.Array]] = None
                       ) -> Callable[..., Any]:
  """Jitted ensemble `step(state, batch, key) -> (state, metrics)`, state donated."""
  step = functools.partial(ensemble_step, loss_fn=loss_fn, tx=ensemble_tx,
                           num_micro_batches=num_micro_batches, compute_dtype=compute_dtype,
                           bootstrap=bootstrap, schedule_fn=schedule_fn)
  return train_state_lib.jit_train_step(step, state_shardings, batch_shardings, mesh)


def ensemble_score_fn(score_fn: reward_model.ScoreFn) -> Callable[..., jax.Array]:
  """`score_fn` over stacked parameters: `(params_M, tokens, ...) -> scores [M, N]`."""
  return jax.vmap(score_fn, in_axes=(0, None, None, None, None))


def mean_and_std(scores_MxN: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Ensemble reward (member mean) and disagreement (population std over members), each [N]."""
  return jnp.mean(scores_MxN, axis=0), jnp.std(scores_MxN, axis=0)
