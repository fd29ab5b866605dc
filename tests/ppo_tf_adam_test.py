"""rlhf_jax.algorithms.ppo.tf_adam: TF1-style Adam against a NumPy reference of its formula."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.algorithms.optimizer import optimizer_config_defaults
from rlhf_jax.algorithms.ppo import tf_adam


def np_tf_adam(grads, lr, b1, b2, eps):
  m = v = np.zeros_like(grads[0])
  p, out = np.zeros_like(grads[0]), []
  for t, g in enumerate(grads, start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    out.append(p.copy())
  return out


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_tf_adam_matches_the_tf1_formula_and_differs_from_pytorch_adam(eps):
  rng = np.random.default_rng(0)
  grads = [rng.normal(0, 1e-3, 5) for _ in range(4)]  # small gradients: eps matters
  cfg = optimizer_config_defaults()
  cfg.lr, cfg.warmup_steps, cfg.decay, cfg.eps, cfg.weight_decay, cfg.grad_clip_norm = 0.1, 0, "constant", eps, 0.0, 0.0
  cfg.adam_form = "tensorflow"
  tx, _ = tf_adam.make_optimizer(cfg)
  torch_tx = optax.adam(0.1, b1=cfg.b1, b2=cfg.b2, eps=eps)
  p, q = jnp.zeros(5), jnp.zeros(5)
  s, ts = tx.init(p), torch_tx.init(q)
  expected = np_tf_adam(grads, 0.1, cfg.b1, cfg.b2, eps)
  for g, want in zip(grads, expected):
    u, s = tx.update(jnp.float32(g), s, p)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p, want, rtol=1e-5, atol=1e-7)
    v, ts = torch_tx.update(jnp.float32(g), ts, q)
    q = optax.apply_updates(q, v)
  assert np.abs(np.asarray(p) - np.asarray(q)).max() > 1e-4  # the two forms really differ early on


def test_adam_form_is_validated_and_pytorch_is_the_default():
  cfg = optimizer_config_defaults()
  tx, _ = tf_adam.make_optimizer(cfg)  # no adam_form field: the shared optimiser
  assert tx is not None
  cfg.adam_form = "keras"
  with pytest.raises(ValueError, match="optimizer.adam_form"):
    tf_adam.make_optimizer(cfg)
