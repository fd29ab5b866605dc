"""The PPO update: epochs x minibatches as one `lax.scan` inside ONE jitted function.

Acronyms: PPO = Proximal Policy Optimization (Schulman et al. 2017); KL = Kullback-Leibler; SFT =
Supervised Fine-Tuning; PPO-ptx = PPO with a pretraining/SFT loss mixed in (Ouyang et al. 2022);
TIS = truncated importance sampling (Yao et al. 2025).

Per minibatch the loss is (PPO_DETAILS items 14-20; all terms pure functions in `rlhf_jax.losses`):

  A      = whiten(advantages) over the minibatch's tokens           (item 14, optional)
  L      = L_clip(logp, old_logp, A)                                 (item 15, optional dual clip)
         + vf_coef * L_V(values, old_values, returns)                (item 16, clipped value loss)
         - entropy_coef * H                                          (entropy bonus)
         + kl_coef * KL_est(logp, ref_logp)        if kl_in_loss     (item 11, GRPO; never also in
                                                                      the reward)
         + ptx_coef * NLL(SFT batch)               if ptx_coef > 0   (item 20, PPO-ptx)

each per-token term reduced by the configured aggregation (item 19). Policy and value networks are
separate TrainStates with separate optimisers (gradient clipping lives in the optimiser, item 18);
one `jax.value_and_grad` over both parameter trees gives each its own gradient. During critic
warm-up (`train_policy=False`, item 8) only the value state moves.

The update is generic over `logp_fn(params, inputs) -> (logp_BxS, entropy_BxS)` and
`value_fn(params, inputs) -> values_BxS`, so the same code trains the transformer policy
(`forward.policy_logprobs`) and the tabular bandit of the tests.

Minibatches: each epoch draws a permutation of the B rows from `fold_in(key, epoch)` (identity with
`shuffle=False`) and cuts it into `num_minibatches` equal parts; the E x M steps run as one flat
`lax.scan`. On the first minibatch of the first epoch the parameters are those that produced
`old_logp`, so the ratio is 1: exactly when the rollout's forward pass and the update's are the same
XLA program on the same shapes (the tabular bandit), and to within float32 rounding otherwise (XLA
fuses a differentiated forward pass differently; measured <= 5e-7 in log-prob on CPU for the test
transformer, and `rollout.evaluate(chunk_rows=minibatch size)` removes the batch-shape part).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from rlhf_jax import losses, ops
from rlhf_jax.algorithms import train_state as train_state_lib

PyTree = Any
Metrics = dict[str, jax.Array]
LogpFn = Callable[[PyTree, PyTree], tuple[jax.Array, jax.Array]]
ValueFn = Callable[[PyTree, PyTree], jax.Array]
PtxLossFn = Callable[[PyTree, PyTree], tuple[jax.Array, Metrics]]
_global_norm = getattr(getattr(optax, "tree", None), "norm", None) or optax.global_norm
AGGREGATIONS = ("token_mean", "sequence_mean", "fixed_length")


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
  """PPO update hyper-parameters (hashable: bound statically into the jitted update)."""

  num_epochs: int = 4  # passes over the rollout batch (item 17: LHP used 4)
  num_minibatches: int = 1  # minibatches per epoch (item 17: LHP used 1)
  shuffle: bool = True  # new row permutation each epoch
  clip_eps: float = 0.2  # surrogate clip epsilon (item 15)
  clip_eps_high: Optional[float] = None  # asymmetric upper clip ("clip-higher"); None = clip_eps
  dual_clip: Optional[float] = None  # dual-clip constant c > 1 for negative advantages (None: off; 3 typical)
  value_clip_eps: Optional[float] = 0.2  # value clipping epsilon (item 16; None: unclipped)
  vf_coef: float = 0.1  # value-loss coefficient (item 16)
  entropy_coef: float = 0.0  # entropy-bonus coefficient
  whiten_advantages: bool = True  # whiten advantages per minibatch (item 14)
  aggregation: str = "token_mean"  # "token_mean" | "sequence_mean" | "fixed_length" (item 19)
  fixed_length: Optional[int] = None  # denominator per row for "fixed_length"
  kl_in_loss: bool = False  # add kl_coef * KL estimate to the loss (GRPO); never with KL in the reward
  kl_estimator: str = "k3"  # estimator of the KL loss term: "k1" | "k2" | "k3"
  tis_cap: Optional[float] = None  # truncated importance sampling cap for rollout/trainer mismatch
  ptx_coef: float = 0.0  # PPO-ptx: weight of the SFT negative log-likelihood (0: off)

  def validate(self) -> "UpdateConfig":
    for name in ("num_epochs", "num_minibatches"):
      if getattr(self, name) < 1:
        raise ValueError(f"update.{name} must be >= 1, got {getattr(self, name)}")
    if not 0.0 < self.clip_eps < 1.0:
      raise ValueError(f"update.clip_eps must lie in (0, 1), got {self.clip_eps}")
    if self.dual_clip is not None and not self.dual_clip > 1.0:
      raise ValueError(f"update.dual_clip must be > 1 (or None), got {self.dual_clip}")
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f"update.aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
    if self.aggregation == "fixed_length" and not (self.fixed_length and self.fixed_length > 0):
      raise ValueError("update.aggregation='fixed_length' needs a positive update.fixed_length")
    for name in ("vf_coef", "entropy_coef", "ptx_coef"):
      if getattr(self, name) < 0:
        raise ValueError(f"update.{name} must be >= 0, got {getattr(self, name)}")
    if self.tis_cap is not None and not self.tis_cap > 0:
      raise ValueError(f"update.tis_cap must be positive (or None), got {self.tis_cap}")
    ops.kl.kl_estimator(self.kl_estimator)
    return self


class Experience(NamedTuple):
  """One rollout batch with everything the update holds fixed; every leaf has leading dim B."""
  inputs: PyTree  # read by logp_fn / value_fn (`forward.SequenceInputs` for language models)
  mask_BxS: jax.Array  # 1 on response tokens
  old_logp_BxS: jax.Array  # trainer log-probs of the rollout policy
  ref_logp_BxS: jax.Array  # reference log-probs (for the KL loss term)
  advantages_BxS: jax.Array
  returns_BxS: jax.Array  # value targets (zeros without a critic)
  old_values_BxS: jax.Array  # critic values at rollout time (zeros without a critic)
  rollout_logp_BxS: jax.Array  # sampler log-probs (for TIS)


class UpdateResult(NamedTuple):
  policy_state: train_state_lib.TrainState
  value_state: Optional[train_state_lib.TrainState]
  metrics: Metrics  # scalars: means over all minibatch steps (maxima for *_max), plus "first_*"
  per_minibatch: Metrics  # every metric as an [epochs, minibatches] array


def ppo_loss(policy_params: PyTree, value_params: Optional[PyTree], mb: Experience, kl_coef: jax.Array,
             ptx_mb: Optional[PyTree], *, logp_fn: LogpFn, value_fn: Optional[ValueFn],
             ptx_loss_fn: Optional[PtxLossFn], cfg: UpdateConfig) -> tuple[jax.Array, Metrics]:
  """The minibatch loss of the module docstring; returns (total loss, metrics)."""
  mask_BxS = mb.mask_BxS
  agg = dict(aggregation=cfg.aggregation, fixed_length=cfg.fixed_length)
  logp_BxS, entropy_BxS = logp_fn(policy_params, mb.inputs)
  adv_BxS = mb.advantages_BxS
  if cfg.whiten_advantages:
    adv_BxS = ops.masked_whiten(adv_BxS, mask_BxS)
  is_weights_BxS = None
  if cfg.tis_cap is not None:
    is_weights_BxS = losses.tis_weights(mb.old_logp_BxS, mb.rollout_logp_BxS, cfg.tis_cap)
  pg_loss, pg_metrics = losses.clipped_surrogate_loss(
      logp_BxS, mb.old_logp_BxS, adv_BxS, mask_BxS, clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
      dual_clip=cfg.dual_clip, is_weights_BxS=is_weights_BxS, **agg)
  ent_loss, ent_metrics = losses.entropy_bonus(entropy_BxS, mask_BxS, **agg)
  total = pg_loss + cfg.entropy_coef * ent_loss
  valid_BxS = mask_BxS.astype(bool)
  dlogp_BxS = jnp.where(valid_BxS, jax.lax.stop_gradient(logp_BxS) - mb.old_logp_BxS, 0.0)
  metrics = {
      "loss/policy": pg_loss, "loss/entropy": ent_loss,
      "policy/clipfrac": pg_metrics["clipfrac"], "policy/approx_kl": pg_metrics["approx_kl"],
      "policy/approx_kl_k3": pg_metrics["approx_kl_k3"], "policy/ratio_mean": pg_metrics["ratio_mean"],
      "policy/ratio_max": pg_metrics["ratio_max"], "policy/logp_diff_max": jnp.max(jnp.abs(dlogp_BxS)),
      "policy/entropy": ent_metrics["entropy"], "policy/advantages_mean": ops.masked_mean(adv_BxS, mask_BxS),
  }
  if "dual_clipfrac" in pg_metrics:
    metrics["policy/dual_clipfrac"] = pg_metrics["dual_clipfrac"]
  if cfg.kl_in_loss:
    kl_BxS = ops.kl.kl_estimator(cfg.kl_estimator)(logp_BxS, mb.ref_logp_BxS)
    kl_loss = ops.aggregate_loss(jnp.where(valid_BxS, kl_BxS, 0.0), mask_BxS, cfg.aggregation, cfg.fixed_length)
    total = total + kl_coef * kl_loss
    metrics["loss/kl"] = kl_loss
  if value_fn is not None:
    values_BxS = value_fn(value_params, mb.inputs)
    vf_loss, vf_metrics = losses.value_loss(values_BxS, mb.old_values_BxS, mb.returns_BxS, mask_BxS,
                                            clip_eps=cfg.value_clip_eps, **agg)
    total = total + cfg.vf_coef * vf_loss
    metrics.update({"loss/value": vf_loss, "value/clipfrac": vf_metrics["vf_clipfrac"],
                    "value/explained_var": vf_metrics["vf_explained_var"],
                    "value/mean": ops.masked_mean(jax.lax.stop_gradient(values_BxS), mask_BxS)})
  if ptx_loss_fn is not None and cfg.ptx_coef > 0:
    ptx_loss, _ = ptx_loss_fn(policy_params, ptx_mb)
    total = total + cfg.ptx_coef * ptx_loss
    metrics["loss/ptx"] = ptx_loss
  metrics["loss/total"] = total
  return total, metrics


def _select_tree(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def minibatch_indices(key: jax.Array, num_epochs: int, batch_size: int, num_minibatches: int,
                      shuffle: bool) -> jax.Array:
  """[E, M, B / M] row indices: epoch e permutes the rows with `fold_in(key, e)` and cuts them in M."""
  def one_epoch(epoch):
    rows = jnp.arange(batch_size)
    if shuffle:
      rows = jax.random.permutation(jax.random.fold_in(key, epoch), batch_size)
    return rows.reshape(num_minibatches, batch_size // num_minibatches)
  return jax.vmap(one_epoch)(jnp.arange(num_epochs))


def _summarise(per_step: Metrics) -> Metrics:
  """Scalar metrics from [E, M] arrays: mean (max for *_max), and the first minibatch's values."""
  out = {}
  for name, values in per_step.items():
    out[name] = jnp.max(values) if name.endswith("_max") else jnp.mean(values)
  for name in ("policy/ratio_mean", "policy/ratio_max", "policy/logp_diff_max", "policy/approx_kl",
               "policy/clipfrac"):
    if name in per_step:
      out[name.replace("policy/", "policy/first_")] = per_step[name][0, 0]
  return out


def ppo_update(policy_state: train_state_lib.TrainState, value_state: Optional[train_state_lib.TrainState],
               experience: Experience, key: jax.Array, kl_coef: jax.Array, train_policy: jax.Array,
               ptx_batch: Optional[PyTree] = None, *, logp_fn: LogpFn, value_fn: Optional[ValueFn],
               policy_tx: optax.GradientTransformation, value_tx: Optional[optax.GradientTransformation],
               cfg: UpdateConfig, ptx_loss_fn: Optional[PtxLossFn] = None) -> UpdateResult:
  """`cfg.num_epochs` x `cfg.num_minibatches` PPO steps over one rollout batch.

  Bind the keyword-only arguments with functools.partial and jit the result once; donate the states.

  Args:
    policy_state: the policy's TrainState.
    value_state: the critic's TrainState, or None for critic-free runs (then `value_fn` is None).
    experience: the rollout batch (`Experience`); B must be divisible by num_minibatches.
    key: PRNG key for the minibatch permutations.
    kl_coef: coefficient of the KL loss term (used only with `cfg.kl_in_loss`).
    train_policy: bool scalar; False during critic warm-up (the policy state is returned unchanged).
    ptx_batch: SFT rows for PPO-ptx (leading dim divisible by num_minibatches), or None.
    logp_fn, value_fn, ptx_loss_fn: model functions (module docstring).
    policy_tx, value_tx: the two optimisers.
    cfg: `UpdateConfig`.

  Returns:
    UpdateResult(policy_state, value_state, scalar metrics, per-minibatch metrics [E, M]).
  """
  if (value_fn is None) != (value_state is None):
    raise ValueError("ppo_update: pass both value_state and value_fn (critic) or neither (critic-free)")
  batch_size = experience.mask_BxS.shape[0]
  num_mb = cfg.num_minibatches
  if batch_size % num_mb:
    raise ValueError(f"ppo_update: the rollout batch of {batch_size} rows is not divisible by "
                     f"update.num_minibatches={num_mb}")
  use_ptx = ptx_loss_fn is not None and cfg.ptx_coef > 0
  if use_ptx:
    if ptx_batch is None:
      raise ValueError("ppo_update: update.ptx_coef > 0 needs a ptx_batch")
    ptx_split = jax.tree.map(lambda x: x.reshape((num_mb, x.shape[0] // num_mb) + x.shape[1:]), ptx_batch)
  grad_fn = jax.value_and_grad(
      lambda p, v, mb, ptx: ppo_loss(p, v, mb, kl_coef, ptx, logp_fn=logp_fn, value_fn=value_fn,
                                     ptx_loss_fn=ptx_loss_fn if use_ptx else None, cfg=cfg),
      argnums=(0, 1), has_aux=True)
  train_policy = jnp.asarray(train_policy, bool)

  def minibatch_step(carry, xs):
    pol, val = carry
    idx, ptx_mb = xs
    mb = jax.tree.map(lambda x: jnp.take(x, idx, axis=0), experience)
    (_, metrics), (g_pol, g_val) = grad_fn(pol.params, None if val is None else val.params, mb, ptx_mb)
    metrics["optim/policy_grad_norm"] = _global_norm(g_pol)
    new_pol = _select_tree(train_policy, train_state_lib.apply_gradients(pol, g_pol, policy_tx), pol)
    if val is not None:
      metrics["optim/value_grad_norm"] = _global_norm(g_val)
      val = train_state_lib.apply_gradients(val, g_val, value_tx)
    return (new_pol, val), metrics

  num_ep = cfg.num_epochs
  idx_ExMxR = minibatch_indices(key, num_ep, batch_size, num_mb, cfg.shuffle)
  # One flat scan over the E * M minibatch steps (the PPO ptx rows repeat every epoch).
  idx_TxR = idx_ExMxR.reshape((num_ep * num_mb,) + idx_ExMxR.shape[2:])
  ptx_steps = None
  if use_ptx:
    ptx_steps = jax.tree.map(lambda x: jnp.concatenate([x] * num_ep, axis=0), ptx_split)
  (policy_state, value_state), per_step = jax.lax.scan(
      minibatch_step, (policy_state, value_state), (idx_TxR, ptx_steps))
  per_step = jax.tree.map(lambda x: x.reshape((num_ep, num_mb) + x.shape[1:]), per_step)
  return UpdateResult(policy_state=policy_state, value_state=value_state, metrics=_summarise(per_step),
                      per_minibatch=per_step)
