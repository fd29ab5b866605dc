"""Critic-free advantages over groups of N samples per prompt.

Acronyms: GRPO = Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath); Dr. GRPO =
"GRPO Done Right" (Liu et al. 2025); RLOO = REINFORCE Leave-One-Out (Ahmadian et al. 2024, after
Kool et al. 2019); GAE = Generalized Advantage Estimation.

Input `scores_BxN`: B prompts x N sampled responses, one scalar score per response. Output: one
advantage per response, [B, N]; `sequence_to_token_advantages` spreads it over response tokens.

How these differ from "gae" (`rlhf_jax.ops.returns.gae`): GAE is per-token, needs a learned value
function (critic) and per-token rewards (KL-shaped, score at the last token), and bootstraps along
the sequence. GRPO/RLOO use a per-prompt group baseline instead of a critic and give every token
of a response the same advantage. GAE therefore has a different signature and is not registered
in `get_advantage_estimator`.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

AdvantageEstimator = Callable[..., jax.Array]


def _float(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_scores(fn: str, scores_BxN: jax.Array, min_n: int) -> None:
  if scores_BxN.ndim != 2:
    raise ValueError(f"{fn}: `scores_BxN` must have shape [B, N] (prompts x samples), got "
                     f"{scores_BxN.shape}")
  if scores_BxN.shape[1] < min_n:
    raise ValueError(f"{fn}: needs at least {min_n} samples per prompt, got N = "
                     f"{scores_BxN.shape[1]} (`scores_BxN` shape {scores_BxN.shape})")


def grpo_advantages(scores_BxN: jax.Array, *, scale_by_std: bool = True, ddof: int = 1,
                    eps: float = 1e-6) -> jax.Array:
  """GRPO outcome advantages (Shao et al. 2024, sec. 4.1.2), per group of N samples.

    A_i = (r_i - mean_j r_j) / (std_j r_j + eps)     (scale_by_std=True)
    A_i =  r_i - mean_j r_j                           (scale_by_std=False, Dr. GRPO)

  std uses `ddof` (1 = unbiased sample std, as torch.std in common GRPO code; 0 = population).
  A constant group gives exactly 0 (never NaN).
  Example: scores [[1, 2, 3]] (ddof 1, std 1) -> [[-1, 0, 1]] (up to eps).
  """
  _check_scores("grpo_advantages", scores_BxN, min_n=max(1, ddof + 1) if scale_by_std else 1)
  scores_BxN = _float(scores_BxN)
  centred_BxN = scores_BxN - jnp.mean(scores_BxN, axis=1, keepdims=True)
  if not scale_by_std:
    return centred_BxN
  std_Bx1 = jnp.std(scores_BxN, axis=1, keepdims=True, ddof=ddof)
  return centred_BxN / (std_Bx1 + eps)


def rloo_advantages(scores_BxN: jax.Array) -> jax.Array:
  """RLOO advantages (Ahmadian et al. 2024, eq. 7): baseline = mean of the OTHER N - 1 samples.

    A_i = r_i - (1 / (N - 1)) * sum_{j != i} r_j  =  N / (N - 1) * (r_i - mean_j r_j)

  Advantages sum to zero in each group. Example: [[1, 2, 6]] -> [[-3, -1.5, 4.5]].
  """
  _check_scores("rloo_advantages", scores_BxN, min_n=2)
  scores_BxN = _float(scores_BxN)
  n = scores_BxN.shape[1]
  leave_one_out_BxN = (jnp.sum(scores_BxN, axis=1, keepdims=True) - scores_BxN) / (n - 1)
  return scores_BxN - leave_one_out_BxN


def sequence_to_token_advantages(adv_B: jax.Array, mask_BxS: jax.Array) -> jax.Array:
  """Gives every response token its sequence's advantage: adv_B[:, None] on the mask, 0 elsewhere.

  Flatten [B, N] advantages to [B * N] first so rows line up with the [B * N, S] token batch.
  """
  if adv_B.ndim != 1 or mask_BxS.ndim != 2 or adv_B.shape[0] != mask_BxS.shape[0]:
    raise ValueError(f"sequence_to_token_advantages: `adv_B` shape {adv_B.shape} and `mask_BxS` "
                     f"shape {mask_BxS.shape} do not match ([B] and [B, S])")
  adv_B = _float(adv_B)
  return jnp.where(mask_BxS.astype(bool), adv_B[:, None], 0.0)


_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "grpo": grpo_advantages,
    "dr_grpo": functools.partial(grpo_advantages, scale_by_std=False),
    "rloo": rloo_advantages,
}


def get_advantage_estimator(name: str) -> AdvantageEstimator:
  """Returns the group advantage estimator `scores_BxN -> adv_BxN` registered under `name`."""
  try:
    return _ESTIMATORS[name]
  except KeyError:
    hint = (" ('gae' is per-token and needs a critic: use rlhf_jax.ops.returns.gae)"
            if name == "gae" else "")
    raise ValueError(f"unknown advantage estimator {name!r}; choose one of "
                     f"{sorted(_ESTIMATORS)}{hint}") from None
