"""PPO taken apart: a trainer built from a config, one rollout inspected token by token, KL control.

Acronyms: PPO = Proximal Policy Optimization; KL = Kullback-Leibler; GAE = Generalized Advantage
Estimation; SFT = Supervised Fine-Tuning; RM = reward model.

`build_ppo_session(config, workdir)` performs the set-up of `algorithms.ppo.run.train_ppo` (its
`build_trainer`: SFT policy artifact, frozen reference, reward source, value model, the `PPOTrainer`)
and stops before training, so a notebook can look at a rollout before and after some iterations (`run_iterations`).

`inspect_rollout` runs the trainer's own jitted phases on one batch of prompts (generate with the
EOS trick, the policy / reference / critic forward passes, reward scoring and `build_experience`)
and returns every per-token quantity as NumPy [B, S] arrays (0 after each response's end):

  logp, ref_logp   log pi(y_t | ...) and log pi_ref(y_t | ...) of the sampled tokens
  k1, k3           per-token KL estimates, k1 = logp - ref_logp and k3 = exp(-k1) - 1 + k1
                   (Schulman's estimators; k3 >= 0 and unbiased for KL(pi || pi_ref))
  rewards          r_t = -beta * kl_t + [t = last] * score (kl_t with the run's estimator)
  values           the critic's V(s_t)
  advantages, returns
                   GAE over the response (gamma, lambda of the run) and the value targets,
                   exactly what the PPO update trains on (`Experience`)

`kl_controller_trajectory` replays the adaptive (Ziegler et al. 2019) or fixed KL controller over a
sequence of measured KLs.
"""
from __future__ import annotations

import pathlib
from typing import Any, NamedTuple, Optional, Sequence

import jax
import ml_collections
import numpy as np

from rlhf_jax import ops, sharding
from rlhf_jax.algorithms import metrics as metrics_lib
from rlhf_jax.algorithms.ppo import rewards as rewards_lib, run as ppo_run
from rlhf_jax.algorithms.ppo import state as state_lib, trainer as trainer_lib

PyTree = Any


# A PPO trainer ready to run: what `train_ppo` builds before its first iteration (trainer, state at
# iteration 0, frozen reference, prompts, tokenizer, config, workdir, ...).
PPOSession = ppo_run.PPOSetup


def build_ppo_session(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> PPOSession:
  """`train_ppo`'s set-up (`ppo_run.build_trainer`) without checkpoints or iterations.

  Raises:
    ValueError as `train_ppo` does (empty init.policy_artifact without allow_random_init, bad fields).
  """
  return ppo_run.build_trainer(config, workdir)


def run_iterations(session: PPOSession, num_iterations: int, state: Optional[state_lib.PPOState] = None
                   ) -> trainer_lib.RunResult:
  """Runs PPO from `state` (default: the session's initial state) until `num_iterations` in total.

  Randomness as in `train_ppo` (base key `seed + 1`); metrics go to `<workdir>/metrics.jsonl` and
  completions to `<workdir>/samples.jsonl`. The update donates its input, so `state` (and
  `session.state` when it is the one used) must not be used afterwards: use the result's state.
  """
  writer = metrics_lib.make_writers(session.workdir, tensorboard=False)
  try:
    return session.trainer.run(session.state if state is None else state, session.ref_params, session.prompts,
                               num_iterations, base_key=jax.random.key(session.config.seed + 1), writer=writer,
                               workdir=session.workdir)
  finally:
    writer.close()


class RolloutInspection(NamedTuple):
  """One rollout taken apart (module docstring); every *_BxS array is float64 NumPy, 0 on padding."""
  iteration: int
  beta: float  # KL coefficient used for the rewards
  prompts: list[str]  # one per row (the N samples of a prompt are adjacent rows)
  responses: list[str]
  token_texts: list[list[str]]  # the sentencepiece piece of every response token (real tokens only)
  mask_BxS: np.ndarray  # int: 1 on response tokens (EOS included)
  logp_BxS: np.ndarray
  ref_logp_BxS: np.ndarray
  k1_BxS: np.ndarray
  k3_BxS: np.ndarray
  rewards_BxS: np.ndarray
  values_BxS: np.ndarray
  advantages_BxS: np.ndarray
  returns_BxS: np.ndarray
  raw_score_B: np.ndarray  # the reward source's score
  score_B: np.ndarray  # after normalisation / missing-EOS penalty / clipping (what the reward adds)
  ended_with_eos_B: np.ndarray
  metrics: dict[str, float]  # the rollout metrics `build_experience` logs (kl/ref, reward/...)

  def token_rows(self, b: int) -> list[dict[str, Any]]:
    """A table of row `b`: one entry per response token."""
    n = int(self.mask_BxS[b].sum())
    cols = {"logp": self.logp_BxS, "ref_logp": self.ref_logp_BxS, "k1": self.k1_BxS, "k3": self.k3_BxS,
            "reward": self.rewards_BxS, "value": self.values_BxS, "advantage": self.advantages_BxS,
            "return": self.returns_BxS}
    return [{"t": t, "token": self.token_texts[b][t], **{k: float(v[b, t]) for k, v in cols.items()}}
            for t in range(n)]


def inspect_rollout(session: PPOSession, state: state_lib.PPOState, key: jax.Array, *,
                    ref_params: Optional[PyTree] = None, iteration: Optional[int] = None) -> RolloutInspection:
  """Samples one batch with `state`'s policy and takes it apart (module docstring).

  Args:
    session: from `build_ppo_session` (its trainer's compiled phases are reused).
    state: any PPO state of the session (e.g. `session.state` or `run_iterations(...).state`); not
      modified and not donated.
    key: sampling key.
    ref_params: the reference policy (default: the session's frozen SFT copy).
    iteration: whose prompts to use (default: the state's iteration, as the trainer would).
  """
  trainer = session.trainer
  s = trainer.settings
  if not trainer.critic:
    raise ValueError(f"inspect_rollout shows GAE and needs a critic; advantage.estimator is {s.advantage!r}")
  ref_params = session.ref_params if ref_params is None else ref_params
  it = int(jax.device_get(state.iteration)) if iteration is None else int(iteration)
  rows = trainer_lib.prompt_rows(len(session.prompts.token_ids), it, s.num_prompts, s.seed)
  tokens, mask = trainer_lib.left_pad([session.prompts.token_ids[i] for i in rows], s.max_prompt_len, s.pad_id)
  texts = [session.prompts.texts[i] for i in rows for _ in range(s.sampling.num_samples)]
  rollout = trainer.generate(state.policy.params, *sharding.put_batch((tokens, mask), trainer.mesh), key)
  fwd = trainer.evaluate(state.policy.params, ref_params, state.value.params, rollout.inputs)
  raw_B, responses, _ = trainer.score(rollout, texts)
  exp = trainer.experience(rollout, fwd, jax.device_put(raw_B, sharding.replicated(trainer.mesh)), state.kl.beta,
                           state.reward_moments, state.reward_gain, state.reward_bias)
  mask_BxS = exp.experience.mask_BxS
  kl_BxS = rewards_lib.per_token_kl(fwd.old_logp_BxS, fwd.ref_logp_BxS, mask_BxS, s.reward.kl_estimator)
  rewards_BxS, _ = rewards_lib.token_rewards(exp.score_B, kl_BxS, mask_BxS, state.kl.beta, s.reward)
  host = jax.device_get({
      "mask": mask_BxS, "logp": fwd.old_logp_BxS, "ref": fwd.ref_logp_BxS, "values": fwd.values_BxS,
      "k1": rewards_lib.per_token_kl(fwd.old_logp_BxS, fwd.ref_logp_BxS, mask_BxS, "k1"),
      "k3": rewards_lib.per_token_kl(fwd.old_logp_BxS, fwd.ref_logp_BxS, mask_BxS, "k3"),
      "rewards": rewards_BxS, "adv": exp.experience.advantages_BxS, "ret": exp.experience.returns_BxS,
      "score": exp.score_B, "ended": rollout.ended_with_eos_B, "tokens": rollout.inputs.response_tokens_BxS,
      "beta": state.kl.beta, "metrics": exp.metrics})
  f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
  mask_np = np.asarray(host["mask"], np.int32)
  pieces = [[session.tokenizer.id_to_piece(int(t)) for t, m in zip(row, mrow) if m]
            for row, mrow in zip(np.asarray(host["tokens"]), mask_np)]
  return RolloutInspection(
      iteration=it, beta=float(host["beta"]), prompts=texts, responses=list(responses), token_texts=pieces,
      mask_BxS=mask_np, logp_BxS=f64(host["logp"]), ref_logp_BxS=f64(host["ref"]), k1_BxS=f64(host["k1"]),
      k3_BxS=f64(host["k3"]), rewards_BxS=f64(host["rewards"]), values_BxS=f64(host["values"]),
      advantages_BxS=f64(host["adv"]), returns_BxS=f64(host["ret"]), raw_score_B=f64(raw_B),
      score_B=f64(host["score"]), ended_with_eos_B=np.asarray(host["ended"], bool),
      metrics=metrics_lib.to_scalars(host["metrics"]))


def kl_controller_trajectory(kl_T: Sequence[float], *, controller: str = "adaptive", init_beta: float,
                             batch_size: int, target: Optional[float] = None, horizon: Optional[float] = None,
                             max_error: float = 0.2) -> np.ndarray:
  """beta before every update and after the last ([T + 1]) when the controller sees the KLs `kl_T`.

  Each update counts `batch_size` responses (the trainer passes the rollout's rows). The adaptive
  controller multiplies beta by 1 + clip(KL / target - 1, -max_error, max_error) * batch_size /
  horizon (`ops.kl_control`); the fixed one keeps it.

  Example: adaptive, init_beta 0.1, target 6, horizon 1000, batch 500, KLs [9] -> [0.1, 0.11].
  """
  hparams = {} if controller == "fixed" else {"target": target, "horizon": horizon, "max_error": max_error}
  if controller != "fixed" and (target is None or horizon is None):
    raise ValueError(f"the {controller!r} KL controller needs target= and horizon=")
  ctrl = ops.get_kl_controller(controller, init_beta, **hparams)
  state = ctrl.init()
  betas = [float(state.beta)]
  for kl in kl_T:
    state = ctrl.update(state, np.float32(kl), np.int32(batch_size))
    betas.append(float(state.beta))
  return np.asarray(betas, np.float64)
