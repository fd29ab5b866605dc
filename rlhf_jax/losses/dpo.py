"""Offline preference-optimisation losses on SUMMED response log-probabilities.

Acronyms: DPO = Direct Preference Optimization (Rafailov et al. 2023); cDPO = conservative DPO
(label smoothing, Mitchell 2023); IPO = Identity Preference Optimization (Azar et al. 2023);
SLiC = Sequence Likelihood Calibration (Zhao et al. 2023); rDPO = robust DPO (Chowdhury et al.
2024); SimPO = Simple Preference Optimization (Meng et al. 2024); ORPO = Odds Ratio Preference
Optimization (Hong et al. 2024); NLL = negative log-likelihood; SFT = supervised fine-tuning.

Inputs, one entry per preference pair b (all shape [B]):
  chosen_logp_B, rejected_logp_B:          log pi(y | x) of the policy, SUMMED over response tokens.
  ref_chosen_logp_B, ref_rejected_logp_B:  the same for the frozen reference policy (None for the
                                           reference-free SimPO and ORPO).
  chosen_len_B, rejected_len_B:            number of response tokens (only SimPO and ORPO use them).
  weights_B:                               per-pair weights (None = all ones); zero drops a pair.

Notation: rho_c = logp_c - ref_logp_c, rho_r = logp_r - ref_logp_r are the log-ratios against the
reference and h = rho_c - rho_r is the log-ratio difference. Every loss returns
  loss = sum_b w_b l_b / sum_b w_b          (weighted mean over pairs; 0 when all weights are 0)
and metrics (weighted means over pairs): rewards/chosen, rewards/rejected (implicit rewards,
beta * rho for the reference-based losses), rewards/margin, rewards/accuracy (fraction with
chosen reward strictly above rejected), logps/chosen, logps/rejected (summed log-probs).

Every loss has the same signature so `get_preference_loss(name)` is a drop-in swap; arrays a loss
does not need are ignored (reference-based losses ignore lengths; SimPO and ORPO ignore the
reference, see `REFERENCE_FREE_LOSSES`, so a trainer can skip the reference forward pass).
Hyper-parameters are keyword arguments, bound with `functools.partial` by the caller.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]
PreferenceLoss = Callable[..., tuple[jax.Array, Metrics]]

# Reference-free losses never read ref_*_logp_B.
REFERENCE_FREE_LOSSES = frozenset({"simpo", "orpo"})

# ORPO needs log(1 - p) for p = exp(mean log-prob); a float32 log-softmax can return exactly 0 for a
# very confident token, which would make the odds infinite, so the mean log-prob is capped here.
_ORPO_MAX_MEAN_LOGP = -1e-6


def _float(x: jax.Array) -> jax.Array:
  """Upcasts to at least float32 (float64 stays float64 so gradient checks can run in x64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_pair_array(name: str, x: Optional[jax.Array], shape: Optional[tuple[int, ...]],
                      loss_name: str) -> jax.Array:
  if x is None:
    raise ValueError(f"{loss_name} needs `{name}` (shape [B]) but it is None")
  x = _float(x)
  if x.ndim != 1:
    raise ValueError(f"{loss_name}: `{name}` must have shape [B], got {x.shape}")
  if shape is not None and x.shape != shape:
    raise ValueError(f"{loss_name}: `{name}` has shape {x.shape}, expected {shape} "
                     "(same as chosen_logp_B)")
  return x


def _check_hparam(loss_name: str, name: str, value, low: float, high: float = float("inf"),
                  low_inclusive: bool = False, high_inclusive: bool = False) -> None:
  """Range-checks a hyper-parameter when it is a Python number (traced values are not checked)."""
  if not isinstance(value, (int, float)):
    return
  above = value >= low if low_inclusive else value > low
  below = value <= high if high_inclusive else value < high
  if not (above and below):
    lo = "[" if low_inclusive else "("
    hi = "]" if high_inclusive else ")"
    raise ValueError(f"{loss_name}: `{name}`={value} must lie in {lo}{low}, {high}{hi}")


def _weights(weights_B: Optional[jax.Array], shape: tuple[int, ...], loss_name: str) -> jax.Array:
  if weights_B is None:
    return jnp.ones(shape, jnp.float32)
  return _check_pair_array("weights_B", weights_B, shape, loss_name)


def _weighted_mean(x_B: jax.Array, w_B: jax.Array) -> jax.Array:
  """sum(w * x) / sum(w); the denominator is replaced by 1 when all weights are zero."""
  total_w = jnp.sum(w_B)
  return jnp.sum(w_B * x_B) / jnp.where(total_w > 0, total_w, 1.0)


def _metrics(chosen_reward_B, rejected_reward_B, chosen_logp_B, rejected_logp_B, w_B) -> Metrics:
  chosen_reward_B = jax.lax.stop_gradient(chosen_reward_B)
  rejected_reward_B = jax.lax.stop_gradient(rejected_reward_B)
  return {
      "rewards/chosen": _weighted_mean(chosen_reward_B, w_B),
      "rewards/rejected": _weighted_mean(rejected_reward_B, w_B),
      "rewards/margin": _weighted_mean(chosen_reward_B - rejected_reward_B, w_B),
      "rewards/accuracy": _weighted_mean(
          (chosen_reward_B > rejected_reward_B).astype(w_B.dtype), w_B),
      "logps/chosen": _weighted_mean(jax.lax.stop_gradient(chosen_logp_B), w_B),
      "logps/rejected": _weighted_mean(jax.lax.stop_gradient(rejected_logp_B), w_B),
  }


def _log_ratios(loss_name, chosen_logp_B, rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B,
                weights_B):
  """Validates the reference-based inputs; returns (rho_c, rho_r, logp_c, logp_r, w)."""
  logp_c = _check_pair_array("chosen_logp_B", chosen_logp_B, None, loss_name)
  shape = logp_c.shape
  logp_r = _check_pair_array("rejected_logp_B", rejected_logp_B, shape, loss_name)
  ref_c = _check_pair_array("ref_chosen_logp_B", ref_chosen_logp_B, shape, loss_name)
  ref_r = _check_pair_array("ref_rejected_logp_B", ref_rejected_logp_B, shape, loss_name)
  w = _weights(weights_B, shape, loss_name)
  return logp_c - ref_c, logp_r - ref_r, logp_c, logp_r, w


def _reference_based(loss_name: str, per_pair: Callable[[jax.Array], jax.Array], beta,
                     chosen_logp_B, rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B,
                     weights_B) -> tuple[jax.Array, Metrics]:
  """Shared body: per_pair maps h_B (log-ratio difference, no beta applied) to l_B."""
  _check_hparam(loss_name, "beta", beta, 0.0)
  rho_c, rho_r, logp_c, logp_r, w = _log_ratios(
      loss_name, chosen_logp_B, rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B, weights_B)
  loss = _weighted_mean(per_pair(rho_c - rho_r), w)
  return loss, _metrics(beta * rho_c, beta * rho_r, logp_c, logp_r, w)


def dpo_loss(chosen_logp_B: jax.Array, rejected_logp_B: jax.Array,
             ref_chosen_logp_B: Optional[jax.Array] = None,
             ref_rejected_logp_B: Optional[jax.Array] = None, *,
             weights_B: Optional[jax.Array] = None, chosen_len_B: Optional[jax.Array] = None,
             rejected_len_B: Optional[jax.Array] = None,
             beta: float = 0.1) -> tuple[jax.Array, Metrics]:
  """DPO (Rafailov et al. 2023, eq. 7): l = -log sigmoid(beta * h).

  beta multiplies h exactly once (the implicit reward is beta * rho). Lengths are ignored.
  When policy == reference, h = 0 and the loss is log 2 for every beta.

  Example:
    >>> loss, m = dpo_loss(jnp.array([-4.0]), jnp.array([-6.0]), jnp.array([-5.0]),
    ...                    jnp.array([-5.0]), beta=0.5)   # h = 2, loss = softplus(-1) ~ 0.3133
  """
  del chosen_len_B, rejected_len_B  # Summed log-probs only.
  return _reference_based(
      "dpo_loss", lambda h_B: jax.nn.softplus(-beta * h_B), beta,
      chosen_logp_B, rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B, weights_B)


def conservative_dpo_loss(chosen_logp_B: jax.Array, rejected_logp_B: jax.Array,
                          ref_chosen_logp_B: Optional[jax.Array] = None,
                          ref_rejected_logp_B: Optional[jax.Array] = None, *,
                          weights_B: Optional[jax.Array] = None,
                          chosen_len_B: Optional[jax.Array] = None,
                          rejected_len_B: Optional[jax.Array] = None, beta: float = 0.1,
                          label_smoothing: float = 0.1) -> tuple[jax.Array, Metrics]:
  """cDPO (Mitchell 2023): DPO with labels flipped with probability eps = label_smoothing.

    l = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h),   eps in [0, 0.5].

  eps = 0 is DPO. Equal to log 2 at h = 0 for every beta and eps.
  Example: h = 2, beta = 0.5, eps = 0.1 gives 0.9 * softplus(-1) + 0.1 * softplus(1) ~ 0.4133.
  """
  del chosen_len_B, rejected_len_B
  eps = label_smoothing
  _check_hparam("conservative_dpo_loss", "label_smoothing", eps, 0.0, 0.5, True, True)
  return _reference_based(
      "conservative_dpo_loss",
      lambda h_B: (1.0 - eps) * jax.nn.softplus(-beta * h_B) + eps * jax.nn.softplus(beta * h_B),
      beta, chosen_logp_B, rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B, weights_B)


def robust_dpo_loss(chosen_logp_B: jax.Array, rejected_logp_B: jax.Array,
                    ref_chosen_logp_B: Optional[jax.Array] = None,
                    ref_rejected_logp_B: Optional[jax.Array] = None, *,
                    weights_B: Optional[jax.Array] = None, chosen_len_B: Optional[jax.Array] = None,
                    rejected_len_B: Optional[jax.Array] = None, beta: float = 0.1,
                    label_noise: float = 0.1) -> tuple[jax.Array, Metrics]:
  """rDPO (Chowdhury et al. 2024, eq. 6): unbiased DPO loss under label flips with rate eps.

    l = ((1 - eps) L(h) - eps L(-h)) / (1 - 2 eps),   L(h) = -log sigmoid(beta h),  eps in [0, 0.5).

  Unlike cDPO the second term is subtracted, so l can be negative. Equal to log 2 at h = 0.
  Example: h = 2, beta = 0.5, eps = 0.1 gives (0.9 * 0.3133 - 0.1 * 1.3133) / 0.8 ~ 0.1883.
  """
  del chosen_len_B, rejected_len_B
  eps = label_noise
  _check_hparam("robust_dpo_loss", "label_noise", eps, 0.0, 0.5, low_inclusive=True)
  return _reference_based(
      "robust_dpo_loss",
      lambda h_B: ((1.0 - eps) * jax.nn.softplus(-beta * h_B)
                   - eps * jax.nn.softplus(beta * h_B)) / (1.0 - 2.0 * eps),
      beta, chosen_logp_B, rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B, weights_B)


def ipo_loss(chosen_logp_B: jax.Array, rejected_logp_B: jax.Array,
             ref_chosen_logp_B: Optional[jax.Array] = None,
             ref_rejected_logp_B: Optional[jax.Array] = None, *,
             weights_B: Optional[jax.Array] = None, chosen_len_B: Optional[jax.Array] = None,
             rejected_len_B: Optional[jax.Array] = None,
             beta: float = 0.1) -> tuple[jax.Array, Metrics]:
  """IPO (Azar et al. 2023, eq. 17): l = (h - 1 / (2 beta))^2 on the SUMMED log-ratio difference.

  Here beta is the paper's regularisation strength tau. Some implementations length-normalise
  the log-probs first; this one does not (normalise the inputs if that is wanted).
  Example: h = 2, beta = 0.5 gives (2 - 1)^2 = 1; at h = 0 the loss is 1 / (4 beta^2).
  """
  del chosen_len_B, rejected_len_B
  return _reference_based(
      "ipo_loss", lambda h_B: jnp.square(h_B - 1.0 / (2.0 * beta)), beta,
      chosen_logp_B, rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B, weights_B)


def hinge_loss(chosen_logp_B: jax.Array, rejected_logp_B: jax.Array,
               ref_chosen_logp_B: Optional[jax.Array] = None,
               ref_rejected_logp_B: Optional[jax.Array] = None, *,
               weights_B: Optional[jax.Array] = None, chosen_len_B: Optional[jax.Array] = None,
               rejected_len_B: Optional[jax.Array] = None,
               beta: float = 0.1) -> tuple[jax.Array, Metrics]:
  """SLiC-style hinge (Zhao et al. 2023; the reference-normalised form of Liu et al. 2024 RSO).

    l = max(0, 1 - beta h)

  Example: h = 2, beta = 0.25 gives 0.5; at h = 0 the loss is 1.
  """
  del chosen_len_B, rejected_len_B
  return _reference_based(
      "hinge_loss", lambda h_B: jax.nn.relu(1.0 - beta * h_B), beta,
      chosen_logp_B, rejected_logp_B, ref_chosen_logp_B, ref_rejected_logp_B, weights_B)


def _length_normalised(loss_name, chosen_logp_B, rejected_logp_B, chosen_len_B, rejected_len_B,
                       weights_B):
  """Validates the reference-free inputs; returns (mean_logp_c, mean_logp_r, logp_c, logp_r, w)."""
  logp_c = _check_pair_array("chosen_logp_B", chosen_logp_B, None, loss_name)
  shape = logp_c.shape
  logp_r = _check_pair_array("rejected_logp_B", rejected_logp_B, shape, loss_name)
  len_c = _check_pair_array("chosen_len_B", chosen_len_B, shape, loss_name)
  len_r = _check_pair_array("rejected_len_B", rejected_len_B, shape, loss_name)
  w = _weights(weights_B, shape, loss_name)
  # Lengths are clamped at 1 so a zero-weight padding pair of length 0 cannot produce NaN (NaN
  # times a zero weight is still NaN).
  return (logp_c / jnp.maximum(len_c, 1.0), logp_r / jnp.maximum(len_r, 1.0), logp_c, logp_r, w)


def simpo_loss(chosen_logp_B: jax.Array, rejected_logp_B: jax.Array,
               ref_chosen_logp_B: Optional[jax.Array] = None,
               ref_rejected_logp_B: Optional[jax.Array] = None, *,
               weights_B: Optional[jax.Array] = None, chosen_len_B: Optional[jax.Array] = None,
               rejected_len_B: Optional[jax.Array] = None, beta: float = 2.0,
               gamma: float = 0.5) -> tuple[jax.Array, Metrics]:
  """SimPO (Meng et al. 2024, eq. 6), reference-free with length-normalised log-probs.

    l = -log sigmoid(beta * logp_c / |y_c| - beta * logp_r / |y_r| - gamma)

  gamma is the target reward margin (not scaled by beta, as in the paper). The reference arrays
  are ignored; implicit rewards are beta * logp / |y|.
  Example: logp_c = -4 over 2 tokens, logp_r = -9 over 3 tokens, beta = 2, gamma = 0.5:
    z = 2 * (-2) - 2 * (-3) - 0.5 = 1.5, l = softplus(-1.5) ~ 0.2014.
  """
  del ref_chosen_logp_B, ref_rejected_logp_B  # Reference-free.
  _check_hparam("simpo_loss", "beta", beta, 0.0)
  mean_c, mean_r, logp_c, logp_r, w = _length_normalised(
      "simpo_loss", chosen_logp_B, rejected_logp_B, chosen_len_B, rejected_len_B, weights_B)
  loss = _weighted_mean(jax.nn.softplus(-(beta * (mean_c - mean_r) - gamma)), w)
  return loss, _metrics(beta * mean_c, beta * mean_r, logp_c, logp_r, w)


def orpo_loss(chosen_logp_B: jax.Array, rejected_logp_B: jax.Array,
              ref_chosen_logp_B: Optional[jax.Array] = None,
              ref_rejected_logp_B: Optional[jax.Array] = None, *,
              weights_B: Optional[jax.Array] = None, chosen_len_B: Optional[jax.Array] = None,
              rejected_len_B: Optional[jax.Array] = None,
              lam: float = 0.1) -> tuple[jax.Array, Metrics]:
  """ORPO (Hong et al. 2024, eqs. 6-7): SFT NLL on the chosen response plus an odds-ratio term.

  With a = logp / |y| (per-token mean log-prob) and log odds(y) = a - log(1 - exp(a)):

    l = -a_c  -  lam * log sigmoid(log odds(y_c) - log odds(y_r))

  The SFT term -a_c is the chosen response's per-token mean NLL, averaged over pairs (each pair
  weighs the same; an implementation that averages over all chosen tokens in the batch differs
  when lengths differ). Reference arrays are ignored; implicit rewards are lam * a. Extra
  metrics: orpo/nll (weighted mean of -a_c) and orpo/log_odds_ratio.
  Example: a_c = -0.5, a_r = -1 (lam = 0.1): log odds = 0.4328 and -0.5413, so
    l = 0.5 + 0.1 * softplus(-0.9741) ~ 0.5320.
  """
  del ref_chosen_logp_B, ref_rejected_logp_B  # Reference-free.
  _check_hparam("orpo_loss", "lam", lam, 0.0, low_inclusive=True)
  mean_c, mean_r, logp_c, logp_r, w = _length_normalised(
      "orpo_loss", chosen_logp_B, rejected_logp_B, chosen_len_B, rejected_len_B, weights_B)

  def log_odds(a_B):
    a_B = jnp.minimum(a_B, _ORPO_MAX_MEAN_LOGP)
    return a_B - jnp.log(-jnp.expm1(a_B))  # log(p / (1 - p)) with p = exp(a), stable near 0.

  log_odds_ratio_B = log_odds(mean_c) - log_odds(mean_r)
  nll_B = -mean_c
  loss = _weighted_mean(nll_B + lam * jax.nn.softplus(-log_odds_ratio_B), w)
  metrics = _metrics(lam * mean_c, lam * mean_r, logp_c, logp_r, w)
  metrics["orpo/nll"] = _weighted_mean(jax.lax.stop_gradient(nll_B), w)
  metrics["orpo/log_odds_ratio"] = _weighted_mean(jax.lax.stop_gradient(log_odds_ratio_B), w)
  return loss, metrics


_LOSSES: dict[str, PreferenceLoss] = {
    "dpo": dpo_loss,
    "cdpo": conservative_dpo_loss,
    "robust_dpo": robust_dpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
    "orpo": orpo_loss,
}


def get_preference_loss(name: str) -> PreferenceLoss:
  """Returns the loss function registered under `name` (see `_LOSSES`); bind hparams by partial."""
  try:
    return _LOSSES[name]
  except KeyError:
    raise ValueError(f"unknown preference loss {name!r}; choose one of {sorted(_LOSSES)}") from None
