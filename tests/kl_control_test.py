"""Tests for rlhf_jax.ops.kl_control: the adaptive controller follows Ziegler et al. (2019)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.ops import kl_control


def _python_controller(beta, kls, n_steps, target, horizon):
  betas = []
  for kl in kls:
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    beta = beta * (1.0 + error * n_steps / horizon)
    betas.append(beta)
  return betas


def test_adaptive_controller_follows_formula_with_clipping_both_ways():
  target, horizon, n_steps = 6.0, 1000.0, 64
  # Below target clipped (0.5 -> -0.2), inside the band both ways, above target clipped (+0.2).
  kls = [0.5, 5.0, 6.6, 20.0, 6.0, 2.0, 7.0]
  controller = kl_control.get_kl_controller("adaptive", 0.15, target=target, horizon=horizon)
  state = controller.init()
  update = jax.jit(controller.update)
  expected = _python_controller(0.15, kls, n_steps, target, horizon)
  for kl, beta in zip(kls, expected):
    state = update(state, jnp.float32(kl), jnp.int32(n_steps))
    np.testing.assert_allclose(state.beta, beta, rtol=1e-6)
  errors = [kl / target - 1.0 for kl in kls]
  assert min(errors) < -0.2 and max(errors) > 0.2  # Both clips are exercised.
  unclipped = _python_controller(0.15, [20.0], n_steps, 6.0, horizon)[0]
  assert abs(unclipped - 0.15 * (1 + (20.0 / 6 - 1) * n_steps / horizon)) > 1e-3


def test_docstring_example_and_max_error():
  state = kl_control.KLControllerState(beta=jnp.float32(0.1))
  out = kl_control.adaptive_kl_update(state, 9.0, 500, target=6.0, horizon=1000.0)
  np.testing.assert_allclose(out.beta, 0.11, rtol=1e-6)
  out = kl_control.adaptive_kl_update(state, 9.0, 500, target=6.0, horizon=1000.0, max_error=0.4)
  np.testing.assert_allclose(out.beta, 0.1 * (1 + 0.4 * 0.5), rtol=1e-6)


def test_fixed_controller_never_changes():
  controller = kl_control.get_kl_controller("fixed", 0.05)
  state = controller.init()
  for kl in (0.0, 100.0):
    state = controller.update(state, jnp.float32(kl), 64)
  np.testing.assert_allclose(state.beta, 0.05)


def test_state_works_as_a_scan_carry():
  controller = kl_control.adaptive_kl_controller(0.2, target=3.0, horizon=100.0)
  kls = jnp.array([1.0, 10.0, 3.3, 2.9], jnp.float32)
  final, _ = jax.lax.scan(lambda s, kl: (controller.update(s, kl, 8), None), controller.init(),
                          kls)
  np.testing.assert_allclose(final.beta, _python_controller(0.2, kls.tolist(), 8, 3.0, 100.0)[-1],
                             rtol=1e-6)


def test_bad_configuration():
  with pytest.raises(ValueError, match="unknown KL controller 'pid'"):
    kl_control.get_kl_controller("pid", 0.1)
  with pytest.raises(ValueError, match="horizon"):
    kl_control.get_kl_controller("adaptive", 0.1, target=6.0, horizon=0.0)
  with pytest.raises(TypeError):
    kl_control.get_kl_controller("adaptive", 0.1)  # target and horizon are required.
  with pytest.raises(ValueError, match="init_beta"):
    kl_control.get_kl_controller("fixed", -1.0)
