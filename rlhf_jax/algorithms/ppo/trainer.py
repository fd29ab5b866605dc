"""The PPO host loop: rollout -> score -> advantages -> update, with metrics and a KL guard.

Acronyms: PPO = Proximal Policy Optimization; GRPO = Group Relative Policy Optimization; RLOO =
REINFORCE Leave-One-Out; KL = Kullback-Leibler; EOS = end-of-sequence; EMA = exponential moving
average; SFT = Supervised Fine-Tuning.

One iteration (all device work in four jitted functions, compiled once):

  1. generate   sample N responses for each of the iteration's prompts (EOS trick)   [jitted]
  2. evaluate   old / reference log-probs and values over [prompt; response]          [jitted]
  3. score      the reward source on the host (reward model, gold reward, verifier)
  4. experience score processing, KL shaping, advantages, rollout metrics              [jitted]
     -> KL guard: KL to the reference above `guard.max_kl` stops the run or rolls back
  5. update     epochs x minibatches over policy and value states (one lax.scan)      [jitted]
  6. the KL controller moves beta from this rollout's KL (Ziegler et al. 2019).

Every phase is timed (`time/*`, after blocking on its outputs), tokens/s is reported, and every
`sample_every` iterations a few completions with their score and KL go to `samples.jsonl`.

Prompts are a fixed list; iteration i reads rows of a per-epoch permutation seeded by the run
seed, so the data position is a function of the iteration alone and a resumed (or rolled back) run
sees exactly the prompts it would have seen. Randomness: iteration i uses
`fold_in(fold_in(base_key, i), rollbacks)` split into named streams (generate, update).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import models, ops, sampling, sharding
from rlhf_jax.algorithms import host_loop, metrics as metrics_lib, train_state as train_state_lib
from rlhf_jax.algorithms.ppo import advantages as advantages_lib
from rlhf_jax.algorithms.ppo import experience as experience_lib
from rlhf_jax.algorithms.ppo import forward, rewards as rewards_lib, rollout as rollout_lib
from rlhf_jax.algorithms.ppo import state as state_lib, update as update_lib
from rlhf_jax.algorithms.ppo.settings import GuardConfig, PPOSettings  # noqa: F401  (re-exported)
from rlhf_jax.algorithms.reward_source import RewardSource, ScoringBatch
from rlhf_jax.checkpointing import manager as manager_lib
from rlhf_jax.ops import reward_processing

logger = logging.getLogger(__name__)
PyTree = Any


class KLGuardError(RuntimeError):
  """KL to the reference exceeded the configured bound (and the run was stopped)."""


class _GuardTripped(Exception):
  """Internal: raised by the guard callback to abandon an iteration before its update."""


class PromptSet(NamedTuple):
  """The prompts of a run: chat-rendered token ids and the texts reward functions read."""
  token_ids: Sequence[Sequence[int]]
  texts: Sequence[str]


class RunResult(NamedTuple):
  state: state_lib.PPOState
  history: list[dict[str, float]]  # one record per completed iteration
  rollbacks: int


def to_host(tree: PyTree) -> PyTree:
  """NumPy copies of (possibly batch-sharded) arrays; gathered from every process when there are several."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def prompt_rows(num_total: int, iteration: int, num_prompts: int, seed: int) -> np.ndarray:
  """Indices of iteration `iteration`'s prompts: consecutive slices of per-epoch permutations."""
  if num_total < num_prompts:
    raise ValueError(f"the run has {num_total} prompts, fewer than num_prompts={num_prompts} per iteration")
  per_epoch = num_total // num_prompts
  epoch, slot = divmod(iteration, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(num_total)
  return perm[slot * num_prompts:(slot + 1) * num_prompts]


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads prompts to `length` (item 3); raises naming the first prompt that is too long."""
  for i, p in enumerate(prompts):
    if len(p) > length:
      raise ValueError(f"prompt {i} has {len(p)} tokens, more than sampling.max_prompt_len={length}")
    if not len(p):
      raise ValueError(f"prompt {i} is empty (it needs at least BOS)")
  return sampling.left_pad(prompts, length, pad_id)


class PPOTrainer:
  """Holds the models, the reward source and the four jitted functions of an iteration.

  Usage: `trainer = PPOTrainer(settings, ...)`; `state = trainer.init_state(sft_params, key)`;
  `ref = frozen_copy(state.policy.params, trainer.policy_shardings.params)`;
  `trainer.run(state, ref, prompts, num_iterations, base_key=...)` (or `trainer.iteration` per step).
  """

  def __init__(self, settings: PPOSettings, *, policy_model: models.CausalLM,
               value_model: Optional[models.ScalarModel], reward_source: RewardSource,
               policy_tx: optax.GradientTransformation, value_tx: Optional[optax.GradientTransformation],
               mesh: jax.sharding.Mesh, rules: sharding.LogicalRules = sharding.DEFAULT_RULES,
               decode: Optional[Callable[[list[list[int]]], list[str]]] = None,
               ptx_rows: Optional[Sequence[dict[str, np.ndarray]]] = None,
               monitors: Optional[dict[str, RewardSource]] = None):
    """See the class docstring; `monitors` are extra reward sources scored on every rollout for
    logging only ("monitor/<name>"), e.g. the gold reward while training on a proxy reward model."""
    self.settings = settings.validate(sharding.data_parallel_size(mesh))
    self.critic = advantages_lib.needs_critic(settings.advantage)
    if self.critic and value_model is None:
      raise ValueError(f"advantage estimator {settings.advantage!r} needs a value model")
    self.policy_model, self.value_model = policy_model, value_model if self.critic else None
    self.reward_source, self.decode = reward_source, decode
    self.monitors = dict(monitors or {})
    self.policy_tx, self.value_tx = policy_tx, value_tx if self.critic else None
    self.mesh, self.rules = mesh, rules
    self.ptx_rows = ptx_rows
    s = settings
    self.kl_controller = (ops.get_kl_controller("adaptive", s.init_beta, target=s.kl_target, horizon=s.kl_horizon,
                                                max_error=s.kl_max_error)
                          if s.kl_controller == "adaptive" else ops.get_kl_controller(s.kl_controller, s.init_beta))
    self.logp_fn = functools.partial(forward.policy_logprobs, model=policy_model,
                                     temperature=s.sampling.temperature, chunk_size=s.logprob_chunk_size)
    self.value_fn = (functools.partial(forward.values, value_model=value_model) if self.critic else None)
    ptx_loss_fn = None
    if s.update.ptx_coef > 0:
      from rlhf_jax.algorithms import sft  # pylint: disable=g-import-not-at-top
      ptx_loss_fn = lambda p, b: _mean_nll(sft.sft_loss_fn(p, b, model=policy_model))  # noqa: E731
    self.generate = jax.jit(functools.partial(rollout_lib.generate, model=policy_model, sampling_cfg=s.sampling,
                                              eos_id=s.eos_id, pad_id=s.pad_id))
    self.evaluate = jax.jit(functools.partial(rollout_lib.evaluate, logp_fn=self.logp_fn, value_fn=self.value_fn,
                                              chunk_rows=s.rows // s.update.num_minibatches))
    self.experience = jax.jit(functools.partial(
        experience_lib.build_experience, reward_cfg=s.reward, use_critic=self.critic,
        advantage_fn=advantages_lib.get_advantage_fn(s.advantage, gamma=s.gamma, lam=s.lam,
                                                     num_samples=s.sampling.num_samples)))
    self._update_fn = functools.partial(update_lib.ppo_update, logp_fn=self.logp_fn, value_fn=self.value_fn,
                                        policy_tx=policy_tx, value_tx=self.value_tx, cfg=s.update,
                                        ptx_loss_fn=ptx_loss_fn)
    self.update = None  # jitted by the first init_state, once the state shardings are known
    self.policy_shardings = self.value_shardings = None
    self._ema = jax.jit(lambda ema, p: jax.tree.map(lambda e, x: s.ema_decay * e + (1 - s.ema_decay) * x, ema, p))

  # -- state -----------------------------------------------------------------------------------

  def init_state(self, policy_params: PyTree, key: jax.Array, *, value_init: str = "policy",
                 reward_params: Optional[PyTree] = None) -> state_lib.PPOState:
    """Policy from `policy_params` (the SFT model), critic per `value_init`, controller at init_beta."""
    k_pol, k_val = jax.random.split(key)
    policy, self.policy_shardings = state_lib.create_policy_state(self.policy_model, self.policy_tx, self.mesh,
                                                                  self.rules, k_pol, policy_params)
    value, self.value_shardings = None, None
    if self.critic:
      value, self.value_shardings = state_lib.create_value_state(
          self.value_model, self.value_tx, self.mesh, self.rules, k_val, init=value_init,
          reward_params=reward_params, policy_params=policy.params)
    if self.update is None:
      replicated = sharding.replicated(self.mesh)
      self.update = jax.jit(self._update_fn, donate_argnames=("policy_state", "value_state"),
                            out_shardings=update_lib.UpdateResult(self.policy_shardings, self.value_shardings,
                                                                  replicated, replicated))
    ema = state_lib.frozen_copy(policy.params) if self.settings.ema_decay > 0 else None
    # Scalars live replicated on the mesh from the start, like the jitted functions' outputs, so the
    # second iteration calls the same compiled programs as the first.
    kl, moments, gain, bias, iteration = jax.device_put(
        (self.kl_controller.init(), reward_processing.running_moments_init(), jnp.ones((), jnp.float32),
         jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)), sharding.replicated(self.mesh))
    return state_lib.PPOState(policy=policy, value=value, kl=kl, reward_moments=moments, reward_gain=gain,
                              reward_bias=bias, policy_ema=ema, iteration=iteration)

  # -- one iteration ---------------------------------------------------------------------------

  def _prompt_batch(self, prompts: PromptSet, iteration: int) -> tuple[Any, list[str]]:
    """This iteration's prompts on the mesh, and the prompt text of every (prompt, sample) row.

    With several processes each one puts its own slice of the rows (process-local data)."""
    s = self.settings
    rows = prompt_rows(len(prompts.token_ids), iteration, s.num_prompts, s.seed)
    tokens, mask = left_pad([prompts.token_ids[i] for i in rows], s.max_prompt_len, s.pad_id)
    texts = [prompts.texts[i] for i in rows for _ in range(s.sampling.num_samples)]
    if jax.process_count() > 1:
      local = s.num_prompts // jax.process_count()
      lo = jax.process_index() * local
      tokens, mask = tokens[lo:lo + local], mask[lo:lo + local]
    return sharding.put_batch((tokens, mask), self.mesh), texts

  def score(self, rollout: rollout_lib.Rollout, prompt_texts: list[str]
            ) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Raw scores from the reward source (on the host), the decoded responses and monitor scores.

    Every process scores all rows (gathered from the mesh), so the scores are replicated."""
    inputs = to_host(rollout.inputs)
    responses = (self.decode(np.asarray(inputs.response_tokens_BxS).tolist()) if self.decode is not None
                 else [""] * len(prompt_texts))
    batch = ScoringBatch(prompts=prompt_texts, responses=responses, prompt_tokens_BxP=inputs.prompt_tokens_BxP,
                         prompt_mask_BxP=inputs.prompt_mask_BxP, response_tokens_BxS=inputs.response_tokens_BxS,
                         response_mask_BxS=inputs.response_mask_BxS)
    monitored = {name: np.asarray(src(batch), np.float32) for name, src in self.monitors.items()}
    return np.asarray(self.reward_source(batch), np.float32), responses, monitored

  def fit_reward_normalization(self, state: state_lib.PPOState, ref_params: PyTree, prompts: PromptSet,
                               key: jax.Array, num_samples: Optional[int] = None) -> state_lib.PPOState:
    """Item 7: gain/bias so that reference-policy samples score mean 0, std 1.

    Samples whole rollouts of the reference until `num_samples` (default `reward_norm_samples`)
    responses are scored; the gain and bias go into the state (and so into checkpoints)."""
    target = self.settings.reward_norm_samples if num_samples is None else num_samples
    scores, i = [], 0
    while sum(len(s) for s in scores) < target:
      batch, texts = self._prompt_batch(prompts, i)
      rollout = self.generate(ref_params, *batch, jax.random.fold_in(key, i))
      scores.append(self.score(rollout, texts)[0])
      i += 1
    gain, bias = rewards_lib.fit_reward_normalization(np.concatenate(scores))
    logger.info("reward normalisation from %d reference samples: gain %.4g, bias %.4g",
                sum(len(s) for s in scores), gain, bias)
    gain, bias = jax.device_put((jnp.float32(gain), jnp.float32(bias)), sharding.replicated(self.mesh))
    return state.replace(reward_gain=gain, reward_bias=bias)

  def iteration(self, state: state_lib.PPOState, ref_params: PyTree, prompts: PromptSet, key: jax.Array,
                guard: Optional[Callable[[float], None]] = None) -> tuple[state_lib.PPOState, dict, list[dict]]:
    """One PPO iteration (module docstring). `guard(kl)` runs after the rollout, before the update."""
    s = self.settings
    it = int(jax.device_get(state.iteration))
    k_gen, k_upd = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
    timings, t_start = {}, time.perf_counter()

    def lap(name, tree):
      jax.block_until_ready(tree)
      now = time.perf_counter()
      timings[f"time/{name}_s"] = now - lap.last
      lap.last = now
      return tree
    lap.last = t_start

    batch, texts = self._prompt_batch(prompts, it)
    rollout = lap("generation", self.generate(state.policy.params, *batch, k_gen))
    value_params = None if state.value is None else state.value.params
    fwd = lap("forward", self.evaluate(state.policy.params, ref_params, value_params, rollout.inputs))
    raw_scores, responses, monitored = self.score(rollout, texts)
    lap("reward", raw_scores)
    scores_on_mesh = jax.device_put(raw_scores, sharding.replicated(self.mesh)) if jax.process_count() == 1 else (
        jax.make_array_from_callback(raw_scores.shape, sharding.replicated(self.mesh), lambda idx: raw_scores[idx]))
    exp = lap("advantages", self.experience(rollout, fwd, scores_on_mesh, state.kl.beta,
                                            state.reward_moments, state.reward_gain, state.reward_bias))
    kl_ref = float(jax.device_get(exp.metrics["kl/ref"]))
    if guard is not None:
      guard(kl_ref)
    ptx = None
    if s.update.ptx_coef > 0:
      idx = prompt_rows(len(self.ptx_rows), it, s.ptx_batch_size, s.seed + 1)
      ptx = sharding.put_batch({k: np.stack([self.ptx_rows[i][k] for i in idx]) for k in self.ptx_rows[0]},
                               self.mesh)
    train_policy = jnp.asarray(it >= s.critic_warmup_iterations)
    result = lap("update", self.update(state.policy, state.value, exp.experience, k_upd, state.kl.beta,
                                       train_policy, ptx))
    new_kl = jax.device_put(self.kl_controller.update(state.kl, jnp.float32(kl_ref), jnp.int32(s.rows)),
                            sharding.replicated(self.mesh))
    ema = None if state.policy_ema is None else self._ema(state.policy_ema, result.policy_state.params)
    new_state = state.replace(policy=result.policy_state, value=result.value_state, kl=new_kl,
                              reward_moments=exp.reward_moments, policy_ema=ema, iteration=state.iteration + 1)
    metrics = metrics_lib.to_scalars(jax.device_get({**exp.metrics, **result.metrics}))
    total = time.perf_counter() - t_start
    generated = float(np.sum(np.asarray(to_host(rollout.lengths_B))))
    metrics.update(timings)
    metrics.update({"time/iteration_s": total, "time/generation_share": timings["time/generation_s"] / total,
                    "perf/generated_tokens_per_sec": generated / max(timings["time/generation_s"], 1e-9),
                    "perf/tokens_per_sec": generated / max(total, 1e-9), "kl/beta_next": float(new_kl.beta),
                    "train/critic_only": float(not bool(train_policy))})
    metrics.update({f"monitor/{name}": float(np.mean(v)) for name, v in monitored.items()})
    samples = []
    if s.sample_every > 0 and it % s.sample_every == 0:
      seq_kl, score, ended = to_host((exp.sequence_kl_B, exp.score_B, rollout.ended_with_eos_B))
      for i in range(min(s.num_logged_samples, len(texts))):
        samples.append({"iteration": it, "prompt": texts[i], "response": responses[i],
                        "raw_score": float(raw_scores[i]), "score": float(score[i]), "kl": float(seq_kl[i]),
                        "ended_with_eos": bool(ended[i]),
                        **{f"monitor/{name}": float(v[i]) for name, v in monitored.items()}})
    return new_state, metrics, samples

  # -- the loop --------------------------------------------------------------------------------

  def run(self, state: state_lib.PPOState, ref_params: PyTree, prompts: PromptSet, num_iterations: int, *,
          base_key: jax.Array, writer: Optional[metrics_lib.MetricWriter] = None,
          manager: Optional[manager_lib.CheckpointManager] = None, workdir: Optional[str | pathlib.Path] = None,
          config: Any = None, metadata: Optional[dict] = None, guard: Optional[GuardConfig] = None) -> RunResult:
    """Runs iterations until `state.iteration == num_iterations` (resuming from `manager` if it holds one).

    KL guard (`settings.guard`): after each rollout, if the KL to the reference (mean over responses of
    sum_t log pi - log pi_ref) exceeds `max_kl`, "stop" raises KLGuardError and "rollback" restores the
    last good state: the newest checkpoint of `manager` from before the failing iteration (during a
    run checkpoints are only written for states whose rollout KL passed the guard), or without a
    manager an in-memory copy taken at the same cadence. Beta is multiplied by
    `rollback_beta_factor` and the iterations are re-run with fresh randomness; after
    `max_rollbacks` rollbacks the run stops with KLGuardError. `guard` overrides `settings.guard`
    (the guard changes no compiled function).
    """
    s = self.settings if guard is None else dataclasses.replace(self.settings, guard=guard)
    writer = writer or metrics_lib.MultiWriter([])
    host_loop.log_topology(self.mesh)
    abstract = train_state_lib.abstract_like(state)
    rollbacks = 0
    if manager is not None:
      restored = manager.restore_latest(abstract)
      if restored is not None:
        state, extras = restored
        rollbacks = int((extras.metadata or {}).get("rollbacks", 0))
        logger.info("resumed PPO from iteration %d (%s)", extras.step, manager.directory)
        writer.rewind(extras.step)
    samples_path = None if workdir is None else pathlib.Path(workdir) / "samples.jsonl"
    every = max(s.checkpoint_every, 1)
    last_good: Optional[PyTree] = None
    history: list[dict[str, float]] = []
    it = int(jax.device_get(state.iteration))
    if it == 0 and s.reward_norm_samples > 0 and float(jax.device_get(state.reward_gain)) == 1.0:
      state = self.fit_reward_normalization(state, ref_params, prompts, jax.random.fold_in(base_key, 2**31 - 1))

    def save(step: int, st: state_lib.PPOState) -> None:
      if manager is not None and step not in manager.all_steps():
        manager.save(step, st, rng_key=base_key, config=config, metadata={**(metadata or {}), "rollbacks": rollbacks},
                     metrics={k: v for k, v in (history[-1] if history else {}).items() if k != "step"})

    while it < num_iterations:
      def guard(kl: float, it: int = it, current: state_lib.PPOState = state) -> None:
        nonlocal last_good
        if s.guard.max_kl > 0 and not kl <= s.guard.max_kl:
          raise _GuardTripped(kl)
        if it % every == 0:  # this state's rollout KL passed: a good rollback target
          if manager is not None:
            save(it, current)
          elif s.guard.action == "rollback" and s.guard.max_kl > 0:
            last_good = jax.device_get(current)
      key = jax.random.fold_in(jax.random.fold_in(base_key, it), rollbacks)
      try:
        state, metrics, samples = self.iteration(state, ref_params, prompts, key, guard=guard)
      except _GuardTripped as tripped:
        state, it, rollbacks = self._trip(float(tripped.args[0]), it, abstract, manager, last_good, rollbacks,
                                          s.guard)
        writer.rewind(it)  # the abandoned iterations are re-run; their records go
        history = [h for h in history if h["step"] <= it]
        continue
      it += 1
      host_loop.check_finite_losses(it, metrics)
      metrics["train/rollbacks"] = float(rollbacks)
      writer.write_scalars(it, metrics)
      history.append({"step": it, **metrics})
      if samples and samples_path is not None and jax.process_index() == 0:
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        with samples_path.open("a", encoding="utf-8") as f:
          for rec in samples:
            f.write(json.dumps(rec) + "\n")
    save(it, state)
    if manager is not None:
      manager.wait()
    writer.flush()
    return RunResult(state=state, history=history, rollbacks=rollbacks)

  def _trip(self, kl: float, it: int, abstract: PyTree, manager: Optional[manager_lib.CheckpointManager],
            last_good: Optional[PyTree], rollbacks: int, g: GuardConfig) -> tuple[state_lib.PPOState, int, int]:
    """Handles a tripped KL guard: raises (stop) or returns (restored state, its iteration, rollbacks)."""
    msg = (f"KL guard: KL to the reference {kl:.4g} nats per response exceeds guard.max_kl={g.max_kl} at "
           f"iteration {it}")
    if g.action == "stop":
      earlier = [step for step in (manager.all_steps() if manager is not None else []) if step < it]
      where = f"; the last good checkpoint is step {max(earlier)} in {manager.directory}" if earlier else ""
      raise KLGuardError(f"{msg}; stopping (guard.action='stop'){where}")
    if rollbacks >= g.max_rollbacks:
      raise KLGuardError(f"{msg}; already rolled back {rollbacks} times (guard.max_rollbacks), stopping")
    earlier = [step for step in (manager.all_steps() if manager is not None else []) if step < it]
    if earlier:  # a checkpoint at `it` itself holds the state that just failed the guard
      state, _ = manager.restore(max(earlier), abstract)
      source = f"checkpoint step {max(earlier)} in {manager.directory}"
      _discard_after(manager, max(earlier))
    elif last_good is not None:
      state = jax.tree.map(lambda h, a: jax.device_put(h, a.sharding), last_good, abstract)
      source = "the in-memory copy of the last good state"
    else:
      raise KLGuardError(f"{msg}; no good state to roll back to yet (no checkpoint), stopping")
    state = state.replace(kl=state.kl._replace(beta=state.kl.beta * g.rollback_beta_factor))
    restored_it = int(jax.device_get(state.iteration))
    logger.warning("%s; rolled back to iteration %d (%s), beta -> %.4g (rollback %d of %d)", msg, restored_it,
                   source, float(jax.device_get(state.kl.beta)), rollbacks + 1, g.max_rollbacks)
    return state, restored_it, rollbacks + 1


def _discard_after(manager: manager_lib.CheckpointManager, step: int) -> None:
  """Deletes checkpoints after `step` (they lead to the diverged state and will be re-written)."""
  manager.wait()
  for later in manager.all_steps():
    if later > step:
      manager.delete(later)


def _mean_nll(accumulation_output):
  """(loss_sum, (count, metrics)) of the SFT accumulation protocol -> (mean NLL, metrics)."""
  loss_sum, (count, metrics) = accumulation_output
  return loss_sum / jnp.maximum(count, 1.0), metrics
