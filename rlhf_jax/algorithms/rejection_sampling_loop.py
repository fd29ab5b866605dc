"""Iterated rejection-sampling fine-tuning: sample N, keep the best, fine-tune, repeat.

Rejection-sampling fine-tuning (RSFT; RAFT = Reward rAnked FineTuning, Dong et al. 2023; the
rejection-sampling rounds of Llama 2) improves a policy with a reward and nothing but SFT
(Supervised Fine-Tuning). `run_rejection_sampling(config, workdir)` (configs/rejection_sampling.py)
runs `rounds` rounds, starting from the registered policy `config.policy` = pi_0:

  round k:  best-of-N of pi_k on the lab's TRAINING prompts, scored by the selection reward
            -> keep each prompt's best sample (or every sample above a threshold)
            -> SFT from pi_k's parameters on the kept samples (`train_sft(..., records=...)`)
            -> pi_{k+1}, registered as a policy artifact

Every round also draws best-of-N on held-out EVAL prompts with pi_k: its mean rewards measure pi_k
(mean over all samples = the policy's expected reward) and its selected samples are the SFT run's
held-out split. After the last round pi_R is measured the same way. The SFT sections of the
config (optimizer, batch, train, checkpoint, data) are the SFT trainer's own; each round's SFT
config takes the model config and tokenizer of pi_k's artifact.

Outputs: `<workdir>/round_<k>/` with `train_samples.jsonl` (every sample with both rewards), `dataset/`
(the kept training samples as a rejection-sampling SFT dataset whose manifest records policy,
reward, prompts and round), `sft/` (the fine-tuning run), and `round.json`; `<workdir>/rounds.json`
and `<workdir>/rounds.png` (reward of each pi_k on held-out prompts against k). A re-run skips
rounds whose `round.json` was written for the same starting policy.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from rlhf_jax.algorithms import best_of_n as bon
from rlhf_jax.algorithms import best_of_n_run, lab_rewards, policy_loading, rejection_sampling, run_setup
from rlhf_jax.algorithms import sft as sft_lib
from rlhf_jax.evaluation import plots

logger = logging.getLogger(__name__)


def validate_and_derive(config: ml_collections.ConfigDict, num_devices: Optional[int] = None,
                        num_processes: Optional[int] = None) -> sft_lib.Derived:
  """Checks the sampling / selection sections and the SFT sections (SFT's derived sizes)."""
  if isinstance(config.rounds, bool) or not isinstance(config.rounds, int) or config.rounds < 1:
    raise ValueError(f"rounds must be a positive int, got {config.rounds!r}")
  if isinstance(config.best_of_n.num_samples, bool) or not isinstance(config.best_of_n.num_samples, int) \
      or config.best_of_n.num_samples < 1:
    raise ValueError(f"best_of_n.num_samples must be a positive int, got {config.best_of_n.num_samples!r}")
  best_of_n_run.validate_prompts_section(config.prompts)
  best_of_n_run.validate_prompts_section(config.eval_prompts, prefix="eval_prompts")
  if config.prompts.split != "train" or config.eval_prompts.split != "eval":
    raise ValueError(f"prompts.split must be 'train' and eval_prompts.split 'eval' (got "
                     f"{config.prompts.split!r}, {config.eval_prompts.split!r}): fine-tuning on eval prompts "
                     "would leak them into the measurement")
  for name in ("task", "lab_seed"):  # one lab corpus, so the eval prompts are held out from the train ones
    if config.eval_prompts[name] != config.prompts[name]:
      raise ValueError(f"eval_prompts.{name} ({config.eval_prompts[name]!r}) must equal prompts.{name} "
                       f"({config.prompts[name]!r})")
  best_of_n_run.validate_sampling_section(config.sampling, config.best_of_n.num_samples)
  best_of_n_run.check_reward_name(config.reward.source, config.prompts.task)
  if config.selection.mode not in rejection_sampling.SELECTION_MODES:
    raise ValueError(f"selection.mode must be one of {rejection_sampling.SELECTION_MODES}, "
                     f"got {config.selection.mode!r}")
  if config.selection.mode == "threshold" and config.selection.threshold is None:
    raise ValueError("selection.mode='threshold' needs selection.threshold")
  return sft_lib.validate_and_derive(config, num_devices=num_devices, num_processes=num_processes)


def round_sft_config(config: ml_collections.ConfigDict, record: dict[str, Any], registry_path: Any,
                     round_index: int) -> ml_collections.ConfigDict:
  """The SFT config of one round: the loop's SFT sections, starting from pi_k's artifact."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  model = dict(record["model_config"])
  model["compute_dtype"] = config.model.compute_dtype  # the run's precision, as DPO/PPO do
  model["preset"] = "artifact"
  cfg.model = ml_collections.ConfigDict(model)
  cfg.tokenizer.path = str(record["tokenizer_path"])
  cfg.init.params_artifact = record["artifact_id"]
  cfg.registry_dir = str(registry_path)
  cfg.seed = config.seed + round_index  # a fresh data order per round
  return cfg


def _summary(result: bon.BestOfNResult, gold_BxN: np.ndarray) -> dict[str, float]:
  """Means of the proxy and gold rewards: all samples (the policy) and each prompt's proxy-best."""
  best = result.best_index_B[:, None]
  return {"proxy/mean": float(np.mean(result.scores_BxN)),
          "proxy/best_mean": float(np.mean(np.take_along_axis(result.scores_BxN, best, axis=1))),
          "gold/mean": float(np.mean(gold_BxN)),
          "gold/best_mean": float(np.mean(np.take_along_axis(gold_BxN, best, axis=1))),
          "eos_fraction": float(np.mean(result.ended_with_eos_BxN)),
          "length_mean": float(np.mean(np.sum(result.mask_BxNxS, axis=2)))}


def _sample(policy, prompts, key, config, reward, batch_size: int) -> tuple[bon.BestOfNResult, np.ndarray]:
  cfg = best_of_n_run.sampling_config(config.sampling, config.best_of_n.num_samples)
  result = best_of_n_run.chunked_best_of_n(policy, prompts, key, cfg, reward=reward, num_heldout=0,
                                           batch_size=batch_size)
  return result, best_of_n_run.ground_truth(result, config.prompts.task, reward)


def _select(result: bon.BestOfNResult, config: ml_collections.ConfigDict, what: str, round_index: int):
  examples = rejection_sampling.select_for_sft(result, mode=config.selection.mode,
                                               threshold=config.selection.threshold,
                                               require_eos=config.selection.require_eos)
  if not examples:
    raise ValueError(f"round {round_index}: no {what} sample passed the selection (mode "
                     f"{config.selection.mode!r}, threshold {config.selection.threshold}, require_eos "
                     f"{config.selection.require_eos}); lower selection.threshold, raise "
                     "sampling.max_new_tokens or set selection.require_eos=False")
  return examples


def run_rejection_sampling(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the loop (module docstring); returns the summary written to `<workdir>/rounds.json`."""
  workdir = run_setup.workdir_path(workdir)
  validate_and_derive(config)
  if not config.policy:
    raise ValueError("policy is empty: pass the artifact id of the starting policy, e.g. "
                     "--config.policy=sft_policy@3f2a9c01b2d4")
  workdir.mkdir(parents=True, exist_ok=True)
  registry_path = run_setup.registry_dir(workdir, config.registry_dir)
  mesh = run_setup.mesh_from_config(config.mesh)
  rules = run_setup.rules_from_config(config.mesh)
  task = config.prompts.task
  train_prompts = lab_rewards.lab_prompts(task, "train", config.prompts.num, seed=config.prompts.lab_seed)
  eval_prompts = lab_rewards.lab_prompts(task, "eval", config.eval_prompts.num, seed=config.eval_prompts.lab_seed)
  base_key = jax.random.key(config.seed)

  rounds, policy_id = [], config.policy
  for k in range(config.rounds + 1):
    round_dir = workdir / f"round_{k}"
    done = round_dir / "round.json"
    if k < config.rounds and done.exists():
      previous = json.loads(done.read_text())
      if previous.get("policy") == policy_id:
        logger.info("round %d already done: %s -> %s", k, policy_id, previous["new_policy"])
        rounds.append(previous)
        policy_id = previous["new_policy"]
        continue
    policy = policy_loading.load_policy(registry_path, policy_id, mesh=mesh, rules=rules)
    reward = lab_rewards.make_reward_source(config.reward.source, registry_dir=registry_path,
                                            policy_tokenizer_id=policy.tokenizer.id,
                                            remote_model=config.reward.remote_model,
                                            remote_timeout_s=config.reward.remote_timeout_s)
    key = jax.random.fold_in(base_key, k)
    eval_result, eval_gold = _sample(policy, eval_prompts, jax.random.fold_in(key, 1), config, reward,
                                      config.eval_prompts.batch_size)
    entry = {"round": k, "policy": policy_id, "reward_source": reward.name, "eval": _summary(eval_result, eval_gold)}
    if k == config.rounds:  # the final policy is only measured
      rounds.append(entry)
      break
    round_dir.mkdir(parents=True, exist_ok=True)
    train_result, train_gold = _sample(policy, train_prompts, jax.random.fold_in(key, 0), config, reward,
                                        config.prompts.batch_size)
    entry["train"] = _summary(train_result, train_gold)
    if run_setup.is_main_process():
      best_of_n_run.write_samples(round_dir / "train_samples.jsonl", train_result, train_gold)
    train_examples = _select(train_result, config, "training", k)
    eval_examples = _select(eval_result, config, "held-out", k)
    provenance = {"stage": "rejection_sampling", "round": k, "policy": policy_id, "reward_source": reward.name,
                  "prompts": {"task": task, "split": "train", "num": config.prompts.num,
                              "lab_seed": config.prompts.lab_seed},
                  "num_samples": config.best_of_n.num_samples, "selection": config.selection.mode,
                  "threshold": config.selection.threshold, "seed": config.seed}
    entry["dataset"] = best_of_n_run.export_dataset(
        train_result, round_dir / "dataset", mode=config.selection.mode, threshold=config.selection.threshold,
        require_eos=config.selection.require_eos, provenance=provenance, tokenizer_id=policy.tokenizer.id)
    records = {"train": [e.to_dict() for e in train_examples], "eval": [e.to_dict() for e in eval_examples]}
    sft_config = round_sft_config(config, policy.record, registry_path, k)
    del policy  # free the sampling copy before fine-tuning
    sft_summary = sft_lib.train_sft(sft_config, round_dir / "sft", records=records)
    entry.update({"new_policy": sft_summary["artifact_id"], "num_train_examples": len(records["train"]),
                  "num_eval_examples": len(records["eval"]),
                  "sft": {key_: sft_summary.get(key_) for key_ in ("first_loss", "last_loss", "final")}})
    entry = best_of_n_run.jsonable(entry)
    run_setup.write_json_side_file(done, json.dumps(entry, indent=2))
    rounds.append(entry)
    policy_id = entry["new_policy"]
    logger.info("round %d: %s -> %s, held-out gold %.3f (best %.3f)", k, entry["policy"], policy_id,
                entry["eval"]["gold/mean"], entry["eval"]["gold/best_mean"])

  summary = best_of_n_run.jsonable({"initial_policy": config.policy, "final_policy": policy_id, "rounds": rounds})
  if run_setup.is_main_process():
    ks = np.arange(len(rounds), dtype=np.float64)
    series = {"gold, mean of samples": (ks, [r["eval"]["gold/mean"] for r in rounds]),
              "gold, best-of-N": (ks, [r["eval"]["gold/best_mean"] for r in rounds])}
    if rounds[0]["reward_source"] != lab_rewards.gold_source(task).name:
      series["proxy, mean of samples"] = (ks, [r["eval"]["proxy/mean"] for r in rounds])
    summary["plot"] = str(plots.plot_curves(series, workdir / "rounds.png", "round (policy pi_k)",
                                            "reward on held-out prompts", title="rejection sampling"))
  run_setup.write_json_side_file(workdir / "rounds.json", json.dumps(summary, indent=2))
  return summary

