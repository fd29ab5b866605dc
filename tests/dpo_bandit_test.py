"""DPO against theory in a one-step bandit: training converges to pi* ~ pi_ref exp(r / beta).

The bandit has one prompt and K responses with known rewards r. The policy is tabular (params =
logits over the K responses) and goes through the SAME step code as the transformer
(`dpo.dpo_step` with a tabular `logp_fn`). Preferences are Bradley-Terry comparisons sampled from
r on pairs drawn from pi_ref; the N sampled comparisons are stored as per-pair weights (the count
of "i beat j" for every ordered pair), which gives exactly the loss of the N-row dataset.

For DPO with reference pi_ref the minimiser of the population loss satisfies
beta (log pi/pi_ref)(i) - beta (log pi/pi_ref)(j) = r_i - r_j for every pair, i.e.
pi*(y) = pi_ref(y) exp(r(y) / beta) / Z (Rafailov et al. 2023, eq. 4 and section 5).
Stated tolerance: total variation distance < 0.01 (measured: 0.0016 at beta 0.5, 0.0006 at
beta 2; sampling noise with N = 10^6 comparisons contributes about 1e-3). A beta applied twice
(the optimum for beta^2) is further than the tolerance from the learned policy at both betas.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax.algorithms import dpo, optimizer, train_state

K = 6
REWARD_K = np.array([1.0, 0.6, 0.1, -0.2, -0.7, -1.0])
REF_LOGITS_K = np.array([0.5, -0.3, 0.8, 0.0, 0.4, -0.6])
NUM_COMPARISONS = 1_000_000
TV_TOLERANCE = 0.01


def tabular_logp_fn(params, batch):
  """A softmax policy over K responses: log pi(y) = logits[y] - logsumexp(logits)."""
  logp_K = jax.nn.log_softmax(params["logits_K"])
  ones_B = jnp.ones(batch["chosen_B"].shape, jnp.float32)
  return dpo.PairLogProbs(logp_K[batch["chosen_B"]], logp_K[batch["rejected_B"]], ones_B, ones_B)


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _ordered_pairs():
  chosen, rejected = np.nonzero(~np.eye(K, dtype=bool))
  return chosen.astype(np.int32), rejected.astype(np.int32)


def sampled_preferences(seed: int) -> dict[str, np.ndarray]:
  """N Bradley-Terry comparisons of pairs drawn from pi_ref, as weights over ordered pairs."""
  rng = np.random.default_rng(seed)
  q = _softmax(REF_LOGITS_K)
  y1, y2 = rng.choice(K, NUM_COMPARISONS, p=q), rng.choice(K, NUM_COMPARISONS, p=q)
  keep = y1 != y2
  y1, y2 = y1[keep], y2[keep]
  first_wins = rng.random(y1.shape) < 1.0 / (1.0 + np.exp(-(REWARD_K[y1] - REWARD_K[y2])))
  winner, loser = np.where(first_wins, y1, y2), np.where(first_wins, y2, y1)
  counts = np.zeros((K, K))
  np.add.at(counts, (winner, loser), 1.0)
  chosen, rejected = _ordered_pairs()
  return {"chosen_B": chosen, "rejected_B": rejected,
          "weight_B": counts[chosen, rejected].astype(np.float32)}


def optimal_policy(beta: float) -> np.ndarray:
  return _softmax(REF_LOGITS_K + REWARD_K / beta)


def _state(logits_K, tx):
  params = {"logits_K": jnp.asarray(logits_K, jnp.float32)}
  return train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=tx.init(params))


def _ref_params():
  return {"logits_K": jnp.asarray(REF_LOGITS_K, jnp.float32)}


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_dpo_converges_to_the_closed_form_optimum(beta):
  cfg = optimizer.optimizer_config_defaults()
  cfg.lr, cfg.warmup_steps, cfg.total_steps, cfg.decay = 0.1, 0, 1500, "cosine"
  cfg.end_lr_ratio, cfg.weight_decay, cfg.grad_clip_norm = 0.01, 0.0, 0.0
  tx, _ = optimizer.make_optimizer(cfg)
  step = jax.jit(dpo.make_dpo_step(tabular_logp_fn, "dpo", {"beta": beta}, tx))
  batch = {k: jnp.asarray(v) for k, v in sampled_preferences(seed=1).items()}
  state = _state(REF_LOGITS_K, tx)  # start at the reference, as DPO from an SFT model does
  ref = _ref_params()
  for i in range(cfg.total_steps):
    state, metrics = step(state, batch, jax.random.key(i), ref)
  learned = _softmax(np.asarray(state.params["logits_K"], np.float64))
  target, reference = optimal_policy(beta), _softmax(REF_LOGITS_K)
  tv = 0.5 * np.abs(learned - target).sum()
  tv_beta_twice = 0.5 * np.abs(learned - optimal_policy(beta**2)).sum()
  print(f"beta={beta}: TV(pi, pi*)={tv:.4f}, TV(pi_ref, pi*)="
        f"{0.5 * np.abs(reference - target).sum():.4f}, loss={float(metrics['loss/total']):.5f}")
  assert 0.5 * np.abs(reference - target).sum() > 0.1  # the optimum is far from the start
  assert tv < TV_TOLERANCE < tv_beta_twice
  # The implicit reward beta log(pi / pi_ref) recovers r up to a constant.
  implicit = beta * (np.log(learned) - np.log(reference))
  np.testing.assert_allclose(implicit - implicit.mean(), REWARD_K - REWARD_K.mean(), atol=0.05)


def test_population_gradient_vanishes_at_the_closed_form_optimum():
  """Identity: with expected Bradley-Terry counts as weights, grad L(pi*) = 0 (and not elsewhere)."""
  beta = 0.7
  q = _softmax(REF_LOGITS_K)
  chosen, rejected = _ordered_pairs()
  win = 1.0 / (1.0 + np.exp(-(REWARD_K[chosen] - REWARD_K[rejected])))
  batch = {"chosen_B": jnp.asarray(chosen), "rejected_B": jnp.asarray(rejected),
           "weight_B": jnp.asarray(q[chosen] * q[rejected] * win, jnp.float32)}
  tx = optax.sgd(1.0)
  step = jax.jit(dpo.make_dpo_step(tabular_logp_fn, "dpo", {"beta": beta}, tx))
  _, at_optimum = step(_state(REF_LOGITS_K + REWARD_K / beta, tx), batch, jax.random.key(0),
                       _ref_params())
  _, at_reference = step(_state(REF_LOGITS_K, tx), batch, jax.random.key(0), _ref_params())
  assert float(at_optimum["optim/grad_norm"]) < 1e-6
  assert float(at_reference["optim/grad_norm"]) > 1e-2


def test_tabular_step_gradient_equals_the_analytic_dpo_gradient():
  """dL/dtheta_k = -(beta / W) sum_b w_b sigmoid(-beta h_b) (1[k = c_b] - 1[k = r_b])."""
  beta = 1.3
  batch = sampled_preferences(seed=2)
  theta = np.array([0.2, -0.1, 0.4, 0.3, -0.5, 0.0])
  tx = optax.sgd(1.0)
  step = jax.jit(dpo.make_dpo_step(tabular_logp_fn, "dpo", {"beta": beta}, tx))
  new_state, metrics = step(_state(theta, tx), {k: jnp.asarray(v) for k, v in batch.items()},
                            jax.random.key(0), _ref_params())
  grad = theta - np.asarray(new_state.params["logits_K"], np.float64)
  c, r, w = batch["chosen_B"], batch["rejected_B"], batch["weight_B"].astype(np.float64)
  h = (theta[c] - REF_LOGITS_K[c]) - (theta[r] - REF_LOGITS_K[r])  # log Z cancels in h
  coef = -beta * w / (1.0 + np.exp(beta * h)) / w.sum()
  want = np.zeros(K)
  np.add.at(want, c, coef)
  np.add.at(want, r, -coef)
  np.testing.assert_allclose(grad, want, atol=2e-6)
  np.testing.assert_allclose(float(metrics["loss/total"]),
                             np.sum(w * np.logaddexp(0.0, -beta * h)) / w.sum(), rtol=1e-6)
