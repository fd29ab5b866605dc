"""Per-token returns for RLHF: GAE, discounted returns and KL-shaped rewards.

Acronyms: GAE = Generalized Advantage Estimation (Schulman et al. 2016); KL = Kullback-Leibler
divergence; PPO = Proximal Policy Optimization.

Each response is one episode. The recursions are written for ONE sequence ([S] arrays, a reverse
`lax.scan`) and vmapped over the batch ([B, S]); see rlax's
`truncated_generalized_advantage_estimation` for the same pattern.

Mask convention: `mask_S` is 1 on response tokens. Masked positions are skipped: they output 0,
their rewards and values are ignored, and the recursion passes through them unchanged, so the
successor of a valid token is the next valid token. After the last valid token the bootstrap value
is 0 (the episode ends). With the usual prefix mask (ones then padding) this is plain GAE:

  delta_t = r_t + gamma * V_{t+1} - V_t                  (V after the last token = 0)
  A_t     = delta_t + gamma * lam * A_{t+1}
  R_t     = A_t + V_t                                    (the value-function target)

lam = 1 gives A_t = G_t - V_t with G the discounted return; lam = 0 gives A_t = delta_t.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _float(x: jax.Array) -> jax.Array:
  """Upcasts to at least float32 (float64 stays float64 so gradient checks can run in x64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_1d(fn: str, mask_S: jax.Array, **arrays: jax.Array) -> None:
  if mask_S.ndim != 1:
    raise ValueError(f"{fn}: `mask_S` must have shape [S], got {mask_S.shape} (vmap the batch)")
  for name, x in arrays.items():
    if x.shape != mask_S.shape:
      raise ValueError(f"{fn}: `{name}` has shape {x.shape}, expected {mask_S.shape} "
                       "(same as mask_S)")


def _check_2d(fn: str, mask_BxS: jax.Array, **arrays: jax.Array) -> None:
  if mask_BxS.ndim != 2:
    raise ValueError(f"{fn}: `mask_BxS` must have shape [B, S], got {mask_BxS.shape}")
  for name, x in arrays.items():
    if x.shape != mask_BxS.shape:
      raise ValueError(f"{fn}: `{name}` has shape {x.shape}, expected {mask_BxS.shape} "
                       "(same as mask_BxS)")


def gae_single(rewards_S: jax.Array, values_S: jax.Array, mask_S: jax.Array, gamma: float,
               lam: float) -> tuple[jax.Array, jax.Array]:
  """GAE for one response (Schulman et al. 2016, eq. 16); returns (advantages_S, returns_S).

  See the module docstring for the recursion and the mask convention. Gradients are not stopped:
  callers treat the outputs as constants (`jax.lax.stop_gradient`) where that is intended.

  Example: rewards [0, 1], values [0.5, 0.5], mask [1, 1], gamma = 1, lam = 1:
    A = [1 - 0.5, 1 - 0.5] = [0.5, 0.5], returns = [1, 1].
  """
  _check_1d("gae_single", mask_S, rewards_S=rewards_S, values_S=values_S)
  valid_S = mask_S.astype(bool)
  rewards_S = _float(rewards_S)
  values_S = _float(values_S)
  zero = jnp.zeros((), rewards_S.dtype)

  def step(carry, inputs):
    next_value, next_adv = carry
    r_t, v_t, valid_t = inputs
    delta_t = r_t + gamma * next_value - v_t
    adv_t = delta_t + gamma * lam * next_adv
    new_carry = (jnp.where(valid_t, v_t, next_value), jnp.where(valid_t, adv_t, next_adv))
    return new_carry, jnp.where(valid_t, adv_t, zero)

  _, adv_S = jax.lax.scan(step, (zero, zero), (rewards_S, values_S, valid_S), reverse=True)
  returns_S = jnp.where(valid_S, adv_S + values_S, zero)
  return adv_S, returns_S


def gae(rewards_BxS: jax.Array, values_BxS: jax.Array, mask_BxS: jax.Array, gamma: float,
        lam: float) -> tuple[jax.Array, jax.Array]:
  """Batched `gae_single` (vmap over B); returns (advantages_BxS, returns_BxS)."""
  _check_2d("gae", mask_BxS, rewards_BxS=rewards_BxS, values_BxS=values_BxS)
  return jax.vmap(gae_single, in_axes=(0, 0, 0, None, None))(
      rewards_BxS, values_BxS, mask_BxS, gamma, lam)


def discounted_returns_single(rewards_S: jax.Array, mask_S: jax.Array,
                              gamma: float) -> jax.Array:
  """G_t = r_t + gamma * G_{t+1} over valid tokens (0 after the last one; masked positions -> 0).

  Example: rewards [1, 0, 2], mask [1, 1, 1], gamma = 0.5 -> [1.5, 1.0, 2.0].
  """
  _check_1d("discounted_returns_single", mask_S, rewards_S=rewards_S)
  valid_S = mask_S.astype(bool)
  rewards_S = _float(rewards_S)
  zero = jnp.zeros((), rewards_S.dtype)

  def step(next_return, inputs):
    r_t, valid_t = inputs
    g_t = r_t + gamma * next_return
    return jnp.where(valid_t, g_t, next_return), jnp.where(valid_t, g_t, zero)

  _, returns_S = jax.lax.scan(step, zero, (rewards_S, valid_S), reverse=True)
  return returns_S


def discounted_returns(rewards_BxS: jax.Array, mask_BxS: jax.Array, gamma: float) -> jax.Array:
  """Batched `discounted_returns_single` (vmap over B)."""
  _check_2d("discounted_returns", mask_BxS, rewards_BxS=rewards_BxS)
  return jax.vmap(discounted_returns_single, in_axes=(0, 0, None))(rewards_BxS, mask_BxS, gamma)


def kl_shaped_rewards_single(score: jax.Array, kl_S: jax.Array, mask_S: jax.Array,
                             beta: float) -> jax.Array:
  """Per-token PPO reward for one response (Ziegler et al. 2019; PPO_DETAILS item 9).

    r_t = -beta * kl_t on every valid token, plus `score` at the last valid token.

  `kl_S` is a precomputed per-token KL estimate (e.g. k1 = logp - ref_logp). A response with an
  empty mask gets all-zero rewards (its score is dropped).
  Example: score 2, kl [0.1, 0.3, x], mask [1, 1, 0], beta 0.5 -> [-0.05, 1.85, 0].
  """
  _check_1d("kl_shaped_rewards_single", mask_S, kl_S=kl_S)
  valid_S = mask_S.astype(bool)
  kl_S = _float(kl_S)
  (seq_len,) = mask_S.shape
  positions_S = jnp.arange(seq_len)
  last_valid = jnp.max(jnp.where(valid_S, positions_S, -1))  # -1 when the mask is empty.
  score_S = jnp.where(positions_S == last_valid, _float(score), 0.0)
  return jnp.where(valid_S, score_S - beta * kl_S, 0.0)


def kl_shaped_rewards(score_B: jax.Array, kl_BxS: jax.Array, mask_BxS: jax.Array,
                      beta: float) -> jax.Array:
  """Batched `kl_shaped_rewards_single` (vmap over B); returns rewards_BxS."""
  _check_2d("kl_shaped_rewards", mask_BxS, kl_BxS=kl_BxS)
  if score_B.shape != mask_BxS.shape[:1]:
    raise ValueError(f"kl_shaped_rewards: `score_B` has shape {score_B.shape}, expected "
                     f"{mask_BxS.shape[:1]}")
  return jax.vmap(kl_shaped_rewards_single, in_axes=(0, 0, 0, None))(
      score_B, kl_BxS, mask_BxS, beta)
