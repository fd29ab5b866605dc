"""Per-token estimators of the KL (Kullback-Leibler) divergence between the policy and a reference.

RLHF keeps the policy pi close to a reference pi_ref (usually the SFT model) with a penalty on
KL(pi || pi_ref) = E_{y ~ pi}[log pi(y) - log pi_ref(y)]. On sampled tokens only the two log-probs
of the sampled token are known, so the KL is estimated per token from them. With
r = log pi_ref(y) - log pi(y) = -(logp - ref_logp) and y ~ pi (J. Schulman, "Approximating KL
divergence", 2020, http://joschu.net/blog/kl-approx.html):

  k1 = -r = logp - ref_logp                unbiased, high variance, can be negative
  k2 = 0.5 r^2                              biased (low bias when pi ~ pi_ref), low variance, >= 0
  k3 = (e^r - 1) - r                        unbiased (E_pi[e^r] = 1), low variance, >= 0

These are estimates of the *value* of KL(pi || pi_ref) when the samples come from pi. Used as a
differentiable loss term (samples held fixed, gradient through logp only), their expected gradients
differ (K. Tang & R. Munos 2025, "On a few pitfalls in KL divergence gradient estimation for RL"):

  E_pi[grad k1] = 0,  E_pi[grad k2] = grad KL(pi || pi_ref),  E_pi[grad k3] = grad KL(pi_ref || pi).

`full_kl` computes the exact per-position KL(p || q) from full logits, for monitoring and tests.

Shape letters: B batch, S sampled/response length, L sequence, V vocabulary.
"""
from __future__ import annotations

import numbers
from typing import Callable, Union

import jax
import jax.numpy as jnp

KLEstimator = Callable[[jax.Array, jax.Array], jax.Array]


def _upcast(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _log_ratio(logp_BxS: jax.Array, ref_logp_BxS: jax.Array) -> jax.Array:
  """log pi - log pi_ref in >= float32, with an exact shape check (no silent broadcasting)."""
  if logp_BxS.shape != ref_logp_BxS.shape:
    raise ValueError(f"logp shape {logp_BxS.shape} != ref_logp shape {ref_logp_BxS.shape}")
  return _upcast(logp_BxS) - _upcast(ref_logp_BxS)


def kl_k1(logp_BxS: jax.Array, ref_logp_BxS: jax.Array) -> jax.Array:
  """k1 = logp - ref_logp: the unbiased, high-variance naive estimator of KL(pi || pi_ref).

  Example:
    >>> kl_k1(jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25])))  # [log 2]
  """
  return _log_ratio(logp_BxS, ref_logp_BxS)


def kl_k2(logp_BxS: jax.Array, ref_logp_BxS: jax.Array) -> jax.Array:
  """k2 = 0.5 (logp - ref_logp)^2: biased, low-variance, non-negative estimator of KL(pi || pi_ref).

  Example:
    >>> kl_k2(jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25])))  # [0.5 (log 2)^2]
  """
  return 0.5 * jnp.square(_log_ratio(logp_BxS, ref_logp_BxS))


def kl_k3(logp_BxS: jax.Array, ref_logp_BxS: jax.Array) -> jax.Array:
  """k3 = exp(r) - 1 - r with r = ref_logp - logp: unbiased, low-variance and >= 0.

  Written as expm1(r) - r, which keeps its precision when the policy is close to the reference
  (r ~ 0, where exp(r) - 1 would lose most digits to cancellation). Large positive r (tokens the
  policy finds much less likely than the reference) grows like e^r; callers that use k3 as a
  penalty on off-policy data may want to clip r themselves.

  Example:
    >>> kl_k3(jnp.log(jnp.array([0.5])), jnp.log(jnp.array([0.25])))  # [0.5 - 1 + log 2]
  """
  r_BxS = -_log_ratio(logp_BxS, ref_logp_BxS)
  return jnp.expm1(r_BxS) - r_BxS


_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_estimator(name: str) -> KLEstimator:
  """Returns the per-token estimator `(logp_BxS, ref_logp_BxS) -> kl_BxS` called `name`.

  Names: "k1", "k2", "k3" (see the module docstring).
  """
  try:
    return _ESTIMATORS[name]
  except KeyError:
    raise ValueError(
        f"unknown KL estimator {name!r}; choose one of {sorted(_ESTIMATORS)}") from None


def full_kl(logits_p_BxLxV: jax.Array, logits_q_BxLxV: jax.Array,
            temperature: Union[float, jax.Array] = 1.0) -> jax.Array:
  """Exact KL(p || q) at every position, p = softmax(logits_p / T), q = softmax(logits_q / T).

  KL[b, l] = sum_v p[b, l, v] (log p[b, l, v] - log q[b, l, v])

  -inf logits are allowed: entries with p = 0 contribute 0; p > 0 where q = 0 gives +inf.

  Args:
    logits_p_BxLxV: logits of p (usually the policy).
    logits_q_BxLxV: logits of q (usually the reference), same shape.
    temperature: divides both sets of logits; must be > 0.

  Returns:
    `kl_BxL` in >= float32.

  Example:
    >>> full_kl(jnp.log(jnp.array([[[0.5, 0.5]]])), jnp.log(jnp.array([[[0.25, 0.75]]])))
    ... # [[0.5 log 2 + 0.5 log(2/3)]]
  """
  if logits_p_BxLxV.shape != logits_q_BxLxV.shape:
    raise ValueError(f"full_kl: logits_p shape {logits_p_BxLxV.shape} != logits_q shape "
                     f"{logits_q_BxLxV.shape}")
  if isinstance(temperature, numbers.Number) and not temperature > 0:
    raise ValueError(f"full_kl: temperature must be > 0, got {temperature!r}")
  logp_BxLxV = jax.nn.log_softmax(_upcast(logits_p_BxLxV) / temperature, axis=-1)
  logq_BxLxV = jax.nn.log_softmax(_upcast(logits_q_BxLxV) / temperature, axis=-1)
  p_BxLxV = jnp.exp(logp_BxLxV)
  # Select before subtracting so p = 0 entries (where log p may be -inf) add exactly 0, with no
  # NaN in the value or the gradient.
  diff_BxLxV = jnp.where(p_BxLxV > 0, logp_BxLxV - logq_BxLxV, 0.0)
  return jnp.sum(p_BxLxV * diff_BxLxV, axis=-1)
