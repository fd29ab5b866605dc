"""rlhf_jax.algorithms.ppo.update with a tabular policy: NumPy references, exact ratio, a bandit.

The update is generic over `logp_fn` / `value_fn`, so a tabular softmax policy (one logit row per
response position) exercises exactly the code the transformer uses, at a size where float64 NumPy
references and finite differences are cheap.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from rlhf_jax.algorithms import train_state as train_state_lib
from rlhf_jax.algorithms.ppo import advantages, rewards, rollout, update

B, S, K = 8, 4, 6
LENGTHS = (4, 2, 3, 1, 4, 4, 2, 3)


# -- the tabular policy and critic --------------------------------------------------------------


def tab_logp(params, inputs):
  """(logp_BxS, entropy_BxS) of a position-wise softmax policy over K tokens."""
  logp_SxK = jax.nn.log_softmax(params["logits_SxK"], axis=-1)
  logp_BxS = jnp.take_along_axis(logp_SxK[None], inputs["tokens_BxS"][..., None], axis=-1)[..., 0]
  ent_S = -jnp.sum(jnp.exp(logp_SxK) * logp_SxK, axis=-1)
  return logp_BxS, jnp.broadcast_to(ent_S[None, :], logp_BxS.shape)


def _previous_tokens(tokens_BxS):
  """The state before token s is the token at s - 1 (token 0 before the first one)."""
  return jnp.concatenate([jnp.zeros_like(tokens_BxS[:, :1]), tokens_BxS[:, :-1]], axis=1)


def tab_value(params, inputs):
  """V(s_t) reads the state (previous token), never the action at t: an action-dependent baseline
  would bias the policy gradient."""
  prev_BxS = _previous_tokens(inputs["tokens_BxS"])
  return jnp.take_along_axis(params["v_SxK"][None], prev_BxS[..., None], axis=-1)[..., 0]


def tab_ptx(params, batch):
  logp, _ = tab_logp(params, batch)
  return -jnp.mean(logp), {}


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_tab(pol, val, tokens):
  logp_SxK = np_log_softmax(pol["logits_SxK"])
  logp = np.take_along_axis(logp_SxK[None], tokens[..., None], -1)[..., 0]
  ent = np.broadcast_to(-(np.exp(logp_SxK) * logp_SxK).sum(-1)[None], logp.shape)
  prev = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
  values = np.take_along_axis(val["v_SxK"][None], prev[..., None], -1)[..., 0]
  return logp, ent, values


def np_aggregate(x, mask, mode, fixed_length=None):
  if mode == "token_mean":
    return (x * mask).sum() / mask.sum()
  if mode == "sequence_mean":
    return np.mean((x * mask).sum(1) / mask.sum(1))
  return (x * mask).sum() / (mask.shape[0] * fixed_length)


def np_ppo_loss(pol, val, mb, kl_coef, cfg, ptx_tokens=None):
  """Float64 reference of update.ppo_loss: returns a dict of the loss terms."""
  mask = mb["mask"]
  logp, ent, values = np_tab(pol, val, mb["tokens"])
  adv = mb["adv"]
  if cfg.whiten_advantages:
    vals = adv[mask > 0]
    adv = (adv - vals.mean()) / np.sqrt(vals.var() + 1e-8) * mask
  ratio = np.exp((logp - mb["old"]) * mask)
  high = cfg.clip_eps if cfg.clip_eps_high is None else cfg.clip_eps_high
  obj = np.minimum(ratio * adv, np.clip(ratio, 1 - cfg.clip_eps, 1 + high) * adv)
  if cfg.dual_clip is not None:
    obj = np.where(adv < 0, np.maximum(obj, cfg.dual_clip * adv), obj)
  pg = -obj
  if cfg.tis_cap is not None:
    pg = pg * np.minimum(np.exp(mb["old"] - mb["rollout"]), cfg.tis_cap)
  agg = functools.partial(np_aggregate, mask=mask, mode=cfg.aggregation, fixed_length=cfg.fixed_length)
  out = {"loss/policy": agg(pg), "loss/entropy": -agg(ent)}
  total = out["loss/policy"] + cfg.entropy_coef * out["loss/entropy"]
  if cfg.kl_in_loss:
    x = logp - mb["ref"]
    out["loss/kl"] = agg(np.exp(-x) - 1 + x)
    total += kl_coef * out["loss/kl"]
  v_clip = values if cfg.value_clip_eps is None else (
      mb["old_v"] + np.clip(values - mb["old_v"], -cfg.value_clip_eps, cfg.value_clip_eps))
  out["loss/value"] = agg(0.5 * np.maximum((values - mb["ret"]) ** 2, (v_clip - mb["ret"]) ** 2))
  total += cfg.vf_coef * out["loss/value"]
  if ptx_tokens is not None and cfg.ptx_coef > 0:
    out["loss/ptx"] = -np.mean(np_tab(pol, val, ptx_tokens)[0])
    total += cfg.ptx_coef * out["loss/ptx"]
  out["loss/total"] = total
  return out


# -- data ------------------------------------------------------------------------------------------


def _data(seed=0):
  rng = np.random.default_rng(seed)
  pol = {"logits_SxK": rng.normal(0, 1.0, (S, K))}
  val = {"v_SxK": rng.normal(0, 1.0, (S, K))}
  tokens = rng.integers(0, K, (B, S))
  mask = (np.arange(S)[None, :] < np.array(LENGTHS)[:, None]).astype(np.float64)
  logp, _, values = np_tab(pol, val, tokens)
  # Old log-probs away from the current ones so ratios cross both clip edges and the dual clip.
  old = (logp + rng.normal(0, 0.4, (B, S))) * mask
  data = {"tokens": tokens, "mask": mask, "old": old, "ref": (logp + rng.normal(0, 0.3, (B, S))) * mask,
          "adv": rng.normal(0, 1.0, (B, S)) * mask, "ret": rng.normal(0, 1.0, (B, S)) * mask,
          "old_v": (values + rng.normal(0, 0.3, (B, S))) * mask,
          "rollout": (old + rng.normal(0, 0.2, (B, S))) * mask}
  return pol, val, data


def _experience(d):
  f32 = lambda k: jnp.asarray(d[k], jnp.float32)  # noqa: E731
  return update.Experience(inputs={"tokens_BxS": jnp.asarray(d["tokens"], jnp.int32)},
                           mask_BxS=jnp.asarray(d["mask"], jnp.int32), old_logp_BxS=f32("old"),
                           ref_logp_BxS=f32("ref"), advantages_BxS=f32("adv"), returns_BxS=f32("ret"),
                           old_values_BxS=f32("old_v"), rollout_logp_BxS=f32("rollout"))


def _j(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


CONFIGS = {
    "defaults": update.UpdateConfig(),
    "dual_clip_entropy_seqmean": update.UpdateConfig(clip_eps=0.1, dual_clip=2.0, entropy_coef=0.05,
                                                     aggregation="sequence_mean", vf_coef=0.5),
    "kl_loss_fixed_len_no_whiten": update.UpdateConfig(kl_in_loss=True, aggregation="fixed_length", fixed_length=6,
                                                       whiten_advantages=False, value_clip_eps=None,
                                                       clip_eps_high=0.3),
    "tis_ptx": update.UpdateConfig(tis_cap=1.1, ptx_coef=0.3, value_clip_eps=0.05, clip_eps=0.3),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("kl_coef", [0.1, 0.7])
def test_ppo_loss_terms_match_numpy(name, kl_coef):
  cfg = CONFIGS[name].validate()
  pol, val, d = _data(1)
  ptx_tokens = np.random.default_rng(9).integers(0, K, (4, S))
  loss_fn = jax.jit(functools.partial(update.ppo_loss, logp_fn=tab_logp, value_fn=tab_value,
                                      ptx_loss_fn=tab_ptx, cfg=cfg))
  _, metrics = loss_fn(_j(pol), _j(val), _experience(d), jnp.float32(kl_coef), {"tokens_BxS": jnp.asarray(ptx_tokens)})
  expected = np_ppo_loss(pol, val, d, kl_coef, cfg, ptx_tokens)
  for term, value in expected.items():
    np.testing.assert_allclose(metrics[term], value, rtol=2e-5, atol=2e-6, err_msg=f"{name}: {term}")
  assert ("loss/kl" in metrics) == cfg.kl_in_loss and ("loss/ptx" in metrics) == (cfg.ptx_coef > 0)
  if name == "defaults":  # the data must exercise clipping, or the test could not see a wrong clip
    assert 0.05 < float(metrics["policy/clipfrac"]) < 0.95
    assert 0.0 < float(metrics["value/clipfrac"]) < 1.0


def test_ppo_loss_gradients_match_finite_differences():
  pol, val, d = _data(2)
  cfg = update.UpdateConfig(kl_in_loss=True, entropy_coef=0.01, dual_clip=3.0)
  with jax.enable_x64(True):
    exp = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                       _experience(d))
    loss = lambda p, v: update.ppo_loss(p, v, exp, 0.2, None, logp_fn=tab_logp, value_fn=tab_value,  # noqa: E731
                                        ptx_loss_fn=None, cfg=cfg)[0]
    check_grads(jax.jit(loss), (jax.tree.map(jnp.asarray, pol), jax.tree.map(jnp.asarray, val)), order=1,
                modes=["rev"], atol=1e-4, rtol=1e-4, eps=1e-6)


def _fd_grad(fn, params, eps=1e-6):
  """Central finite differences of a scalar NumPy function of a dict of arrays."""
  grads = {}
  for k, x in params.items():
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      hi, lo = dict(params), dict(params)
      hi[k], lo[k] = x.copy(), x.copy()
      hi[k][idx] += eps
      lo[k][idx] -= eps
      g[idx] = (fn(hi) - fn(lo)) / (2 * eps)
    grads[k] = g
  return grads


def test_update_steps_equal_numpy_sgd_steps():
  """Two minibatch steps with SGD: parameters and the second step's loss terms equal NumPy's."""
  pol, val, d = _data(3)
  cfg = update.UpdateConfig(num_epochs=1, num_minibatches=2, shuffle=False, kl_in_loss=True,
                            entropy_coef=0.02, vf_coef=0.3)
  lr, kl_coef = 0.5, 0.3
  tx = optax.sgd(lr)
  pol_state = train_state_lib.TrainState(step=jnp.int32(0), params=_j(pol), opt_state=tx.init(_j(pol)))
  val_state = train_state_lib.TrainState(step=jnp.int32(0), params=_j(val), opt_state=tx.init(_j(val)))
  out = jax.jit(functools.partial(update.ppo_update, logp_fn=tab_logp, value_fn=tab_value, policy_tx=tx,
                                  value_tx=tx, cfg=cfg))(pol_state, val_state, _experience(d), jax.random.key(0),
                                                         jnp.float32(kl_coef), True)
  halves = [{k: v[i * 4:(i + 1) * 4] for k, v in d.items()} for i in range(2)]
  p, v = pol, val
  for step, mb in enumerate(halves):
    expected = np_ppo_loss(p, v, mb, kl_coef, cfg)
    for term in ("loss/policy", "loss/value", "loss/kl", "loss/entropy", "loss/total"):
      np.testing.assert_allclose(out.per_minibatch[term][0, step], expected[term], rtol=1e-4, atol=1e-5,
                                 err_msg=f"step {step}: {term}")
    g_p = _fd_grad(lambda q: np_ppo_loss(q, v, mb, kl_coef, cfg)["loss/total"], p)
    g_v = _fd_grad(lambda q: np_ppo_loss(p, q, mb, kl_coef, cfg)["loss/total"], v)
    p = {k: p[k] - lr * g_p[k] for k in p}
    v = {k: v[k] - lr * g_v[k] for k in v}
  np.testing.assert_allclose(out.policy_state.params["logits_SxK"], p["logits_SxK"], atol=2e-5)
  np.testing.assert_allclose(out.value_state.params["v_SxK"], v["v_SxK"], atol=2e-5)
  assert int(out.policy_state.step) == 2 and int(out.value_state.step) == 2


def test_ratio_is_exactly_one_on_the_first_minibatch_only():
  pol, val, d = _data(4)
  cfg = update.UpdateConfig(num_epochs=2, num_minibatches=2)
  params = _j(pol)
  inputs = {"tokens_BxS": jnp.asarray(d["tokens"], jnp.int32)}
  # Old log-probs from the rollout path (rollout.evaluate), as the trainer computes them.
  fwd = jax.jit(functools.partial(rollout.evaluate, logp_fn=tab_logp, value_fn=tab_value, chunk_rows=4))(
      params, params, _j(val), inputs)
  exp = _experience(d)._replace(old_logp_BxS=jnp.where(exp_mask(d), fwd.old_logp_BxS, 0.0),
                                old_values_BxS=fwd.values_BxS)
  tx = optax.adam(0.1)
  state = lambda p: train_state_lib.TrainState(step=jnp.int32(0), params=p, opt_state=tx.init(p))  # noqa: E731
  out = jax.jit(functools.partial(update.ppo_update, logp_fn=tab_logp, value_fn=tab_value, policy_tx=tx,
                                  value_tx=tx, cfg=cfg))(state(params), state(_j(val)), exp, jax.random.key(1),
                                                         jnp.float32(0.0), True)
  ratio_max, diff = np.asarray(out.per_minibatch["policy/ratio_max"]), np.asarray(
      out.per_minibatch["policy/logp_diff_max"])
  assert ratio_max[0, 0] == 1.0 and diff[0, 0] == 0.0 and float(out.per_minibatch["policy/clipfrac"][0, 0]) == 0.0
  assert float(out.metrics["policy/first_ratio_mean"]) == 1.0
  assert np.all(diff.reshape(-1)[1:] > 1e-3)  # every later minibatch sees moved parameters


def exp_mask(d):
  return jnp.asarray(d["mask"], bool)


def test_critic_warmup_trains_only_the_value_network():
  pol, val, d = _data(5)
  tx = optax.adam(0.1)
  state = lambda p: train_state_lib.TrainState(step=jnp.int32(0), params=p, opt_state=tx.init(p))  # noqa: E731
  fn = jax.jit(functools.partial(update.ppo_update, logp_fn=tab_logp, value_fn=tab_value, policy_tx=tx, value_tx=tx,
                                 cfg=update.UpdateConfig(num_epochs=1, num_minibatches=2)))
  out = fn(state(_j(pol)), state(_j(val)), _experience(d), jax.random.key(0), jnp.float32(0), False)
  np.testing.assert_array_equal(out.policy_state.params["logits_SxK"], _j(pol)["logits_SxK"])
  assert int(out.policy_state.step) == 0 and int(out.value_state.step) == 2
  assert np.abs(np.asarray(out.value_state.params["v_SxK"]) - val["v_SxK"]).max() > 1e-3


def test_update_errors_are_clear():
  pol, val, d = _data(6)
  tx = optax.sgd(0.1)
  st = train_state_lib.TrainState(step=jnp.int32(0), params=_j(pol), opt_state=tx.init(_j(pol)))
  with pytest.raises(ValueError, match="not divisible by update.num_minibatches=3"):
    update.ppo_update(st, None, _experience(d), jax.random.key(0), 0.0, True, logp_fn=tab_logp, value_fn=None,
                      policy_tx=tx, value_tx=None, cfg=update.UpdateConfig(num_minibatches=3))
  with pytest.raises(ValueError, match="both value_state and value_fn"):
    update.ppo_update(st, None, _experience(d), jax.random.key(0), 0.0, True, logp_fn=tab_logp,
                      value_fn=tab_value, policy_tx=tx, value_tx=tx, cfg=update.UpdateConfig())
  with pytest.raises(ValueError, match="update.aggregation"):
    update.UpdateConfig(aggregation="mean").validate()
  with pytest.raises(ValueError, match="update.dual_clip"):
    update.UpdateConfig(dual_clip=0.5).validate()


# -- correctness against theory: the KL-regularised one-step bandit ------------------------------


ARMS = 5
REWARD = np.array([1.0, 0.2, -0.5, 0.6, 0.0])
REF_LOGITS = np.array([0.5, 1.2, 0.0, -0.8, 0.3])


def bandit_run(beta, key, estimator="gae", iterations=150, batch=512):
  """PPO with the KL in the reward on a one-token episode; returns the policy after every iteration.

  "gae": per-token KL-shaped reward, a tabular critic and GAE; "rloo" / "grpo": one group of `batch`
  samples, sequence reward score - beta * KL and a group baseline, no critic."""
  critic = estimator == "gae"
  cfg = update.UpdateConfig(num_epochs=2, num_minibatches=4, vf_coef=0.5 if critic else 0.0)
  reward_cfg = rewards.RewardConfig(kl_estimator="k1", missing_eos_penalty=None)
  adv_fn = advantages.get_advantage_fn(estimator, gamma=1.0, lam=0.95, num_samples=batch)
  tx = optax.adam(0.02)
  ref_params = {"logits_SxK": jnp.asarray(REF_LOGITS, jnp.float32)[None]}
  pol = train_state_lib.TrainState(step=jnp.int32(0), params=ref_params, opt_state=tx.init(ref_params))
  v0 = {"v_SxK": jnp.zeros((1, ARMS))}
  val = train_state_lib.TrainState(step=jnp.int32(0), params=v0, opt_state=tx.init(v0)) if critic else None
  value_fn = tab_value if critic else None
  upd = functools.partial(update.ppo_update, logp_fn=tab_logp, value_fn=value_fn, policy_tx=tx,
                          value_tx=tx if critic else None, cfg=cfg)
  mask = jnp.ones((batch, 1), jnp.int32)

  def iteration(carry, k):
    pol, val = carry
    arms = jax.random.categorical(k, pol.params["logits_SxK"][0], shape=(batch,))[:, None]
    inputs = {"tokens_BxS": arms}
    fwd = rollout.evaluate(pol.params, ref_params, None if val is None else val.params, inputs, logp_fn=tab_logp,
                           value_fn=value_fn)
    kl = rewards.per_token_kl(fwd.old_logp_BxS, fwd.ref_logp_BxS, mask, "k1")
    score = jnp.asarray(REWARD, jnp.float32)[arms[:, 0]]
    if critic:
      token_r, _ = rewards.token_rewards(score, kl, mask, jnp.float32(beta), reward_cfg)
      adv_in = advantages.AdvantageInputs(mask_BxS=mask, token_rewards_BxS=token_r, values_BxS=fwd.values_BxS)
    else:
      seq_r, _ = rewards.sequence_rewards(score, kl, mask, jnp.float32(beta), reward_cfg)
      adv_in = advantages.AdvantageInputs(mask_BxS=mask, sequence_rewards_B=seq_r)
    adv, ret = adv_fn(adv_in)
    old_v = fwd.values_BxS if critic else jnp.zeros_like(adv)
    exp = update.Experience(inputs=inputs, mask_BxS=mask, old_logp_BxS=fwd.old_logp_BxS,
                            ref_logp_BxS=fwd.ref_logp_BxS, advantages_BxS=adv, returns_BxS=ret,
                            old_values_BxS=old_v, rollout_logp_BxS=fwd.old_logp_BxS)
    out = upd(pol, val, exp, jax.random.fold_in(k, 1), jnp.float32(0.0), True)
    return (out.policy_state, out.value_state), jax.nn.softmax(out.policy_state.params["logits_SxK"][0])

  _, probs = jax.lax.scan(iteration, (pol, val), jax.random.split(key, iterations))
  return probs


@pytest.fixture(scope="module")
def bandit():
  return jax.jit(bandit_run, static_argnames=("estimator", "iterations", "batch"))


@pytest.mark.parametrize("estimator,beta", [("gae", 0.3), ("gae", 1.0), ("rloo", 0.3), ("grpo", 0.3)])
def test_bandit_converges_to_the_kl_regularised_optimum(bandit, estimator, beta):
  """pi* = pi_ref exp(r / beta) / Z maximises E[r] - beta KL(pi || pi_ref); PPO with the KL in the
  reward reaches it with a critic (GAE) and with group baselines (RLOO, GRPO)."""
  ref = np.exp(REF_LOGITS - REF_LOGITS.max())
  ref /= ref.sum()
  optimum = ref * np.exp(REWARD / beta)
  optimum /= optimum.sum()
  learned = np.asarray(bandit(beta, jax.random.key(7), estimator))[-50:].mean(0)  # average out sampling noise
  tv = 0.5 * np.abs(learned - optimum).sum()
  assert tv < 0.02, (learned, optimum)
  assert 0.5 * np.abs(optimum - ref).sum() > 0.1  # the optimum is far from the start: the test has power
