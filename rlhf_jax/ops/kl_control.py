"""KL-coefficient controllers for the per-token KL penalty in PPO rewards.

Acronyms: KL = Kullback-Leibler divergence; PPO = Proximal Policy Optimization.

Adaptive controller (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
sec. 2.2; PPO_DETAILS item 10), a proportional controller on log(beta):

  e = clip(KL / target - 1, -max_error, max_error)          (max_error = 0.2)
  beta <- beta * (1 + e * n_steps / horizon)

KL is the measured KL to the reference for the last batch, n_steps the number of samples
(episodes) since the previous update, horizon a time constant in samples. lm-human-preferences
used beta_0 = 0.15, target = 6 nats, horizon = 10000. The fixed controller keeps beta constant.

Both are pure: `controller.update(state, kl, n_steps) -> state` on a `KLControllerState`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class KLControllerState(NamedTuple):
  """Current KL coefficient beta (a float32 scalar array so it can live in a jitted carry)."""
  beta: jax.Array


class KLController(NamedTuple):
  """A pair of pure functions: init() -> state and update(state, kl, n_steps) -> state."""
  init: Callable[[], KLControllerState]
  update: Callable[[KLControllerState, jax.Array, jax.Array], KLControllerState]


def adaptive_kl_update(state: KLControllerState, kl: jax.Array, n_steps: jax.Array, *,
                       target: float, horizon: float,
                       max_error: float = 0.2) -> KLControllerState:
  """One step of the Ziegler et al. (2019) controller (formula in the module docstring).

  Example: beta 0.1, KL 9, target 6, n_steps 500, horizon 1000:
    e = clip(0.5, -0.2, 0.2) = 0.2, beta <- 0.1 * (1 + 0.2 * 0.5) = 0.11.
  """
  error = jnp.clip(jnp.asarray(kl, jnp.float32) / target - 1.0, -max_error, max_error)
  factor = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / horizon
  return KLControllerState(beta=(state.beta * factor).astype(state.beta.dtype))


def fixed_kl_update(state: KLControllerState, kl: jax.Array,
                    n_steps: jax.Array) -> KLControllerState:
  """Fixed coefficient: returns `state` unchanged."""
  del kl, n_steps
  return state


def _init(beta: float) -> Callable[[], KLControllerState]:
  return lambda: KLControllerState(beta=jnp.asarray(beta, jnp.float32))


def adaptive_kl_controller(init_beta: float, *, target: float, horizon: float,
                           max_error: float = 0.2) -> KLController:
  """Adaptive controller with bound hyper-parameters (all must be positive)."""
  for name, value in (("init_beta", init_beta), ("target", target), ("horizon", horizon),
                      ("max_error", max_error)):
    if value <= 0:
      raise ValueError(f"adaptive_kl_controller: `{name}`={value} must be positive")

  def update(state, kl, n_steps):
    return adaptive_kl_update(state, kl, n_steps, target=target, horizon=horizon,
                              max_error=max_error)

  return KLController(init=_init(init_beta), update=update)


def fixed_kl_controller(init_beta: float) -> KLController:
  """Fixed controller: beta stays at init_beta (>= 0; 0 disables the penalty)."""
  if init_beta < 0:
    raise ValueError(f"fixed_kl_controller: `init_beta`={init_beta} must be >= 0")
  return KLController(init=_init(init_beta), update=fixed_kl_update)


_CONTROLLERS = {"adaptive": adaptive_kl_controller, "fixed": fixed_kl_controller}


def get_kl_controller(name: str, init_beta: float, **hparams: float) -> KLController:
  """Builds the controller registered under `name` ("adaptive" needs target= and horizon=)."""
  try:
    make = _CONTROLLERS[name]
  except KeyError:
    raise ValueError(f"unknown KL controller {name!r}; choose one of {sorted(_CONTROLLERS)}") \
        from None
  return make(init_beta, **hparams)
