"""The best-of-N experiment: reward of best-of-N against N and against KL, and its samples as SFT data.

`run_best_of_n(config, workdir)` (configs/best_of_n.py) loads a registered policy, draws
N_max = max(best_of_n.num_samples) responses per lab prompt plus M held-out base samples
(`best_of_n.best_of_n`, one compiled sampler call per chunk of prompts), scores them with the
selection reward (the "proxy": gold, verifier, a reward model or a reward service;
`lab_rewards.make_reward_source`) and with the task's ground truth (the lab's gold reward or the
arithmetic verifier), and reports for every N in the list:

  proxy/best_mean   E[proxy of the best-of-N sample], the best chosen by the proxy
  gold/best_mean    E[gold of that same sample]
  *_gain_std        (value(N) - value(1)) / std of the base samples: both rewards in base-std
                    units, so "the proxy rises faster than gold" is read off one plot
  kl/analytic       log N - (N - 1) / N (Stiennon et al. 2020)
  kl/empirical      the held-out-pool estimate (`best_of_n.empirical_best_of_n_kl`), below the
                    analytic value when rewards tie

The expectations for N < N_max use the unbiased estimator over all N_max samples of a prompt
(`evaluation.expected_best_of_k`: the mean over every N-subset of the N_max samples, in closed
form), which has far less variance than keeping only the first N; the empirical KL of N selects
among the first N samples (the pool must not take part in the selection). Standard errors are
over prompts. Outputs in the workdir: `results.json`, `samples.jsonl` (every response with both
rewards), `reward_vs_n.png`, `reward_vs_kl.png`, `gain_vs_kl.png`, and with export on, the
best-of-N_max samples as a rejection-sampling SFT dataset under `dataset/` (`train.jsonl.gz`
and a manifest recording policy, prompts, reward and sampling).

Multi-host: every process samples and scores the same rows (the sampler's output is gathered to
every host) and only process 0 writes files.

Shape letters: B prompts, N samples per prompt (N_max here), M held-out samples, S response length.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Optional, Sequence

import jax
import ml_collections
import numpy as np

from rlhf_jax import sampling, sharding
from rlhf_jax.algorithms import best_of_n as bon
from rlhf_jax.algorithms import lab_rewards, policy_loading, rejection_sampling, reward_source, run_setup
from rlhf_jax.data.schemas import PromptExample, prompt_text
from rlhf_jax.evaluation import best_of_n_kl, expected_best_of_k, plots, spearman

logger = logging.getLogger(__name__)
SPLITS = ("train", "eval")


# ---------------------------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Derived:
  """Values computed from the config."""
  mesh_shape: dict[str, int]
  num_samples: tuple[int, ...]  # the N values, sorted
  max_n: int  # N_max
  rows_per_call: int  # prompts.batch_size * (N_max + num_heldout)


def check_reward_name(name: str, task: str, field: str = "reward.source") -> None:
  """Syntax of a reward name, and that gold / verifier match the task."""
  kind, _, arg = name.partition(":")
  if name not in ("gold", "verifier") and not (kind in ("reward_model", "remote") and arg):
    raise ValueError(f"{field}={name!r} is not a reward source; use one of {lab_rewards.REWARD_NAME_FORMS}")
  if (name, task) in (("gold", "arithmetic"), ("verifier", "reviews")):
    raise ValueError(f"{field}={name!r} cannot score prompts.task={task!r} (gold scores reviews, the verifier "
                     "scores arithmetic)")


def validate_sampling_section(cfg: ml_collections.ConfigDict, max_n: int, prefix: str = "sampling") -> None:
  sampling_config(cfg, 1)  # SamplingConfig.validate names the field
  if max_n > 1 and cfg.temperature <= 0:
    raise ValueError(f"{prefix}.temperature must be > 0 for best-of-N with N > 1 (greedy samples are identical)")


def validate_prompts_section(cfg: ml_collections.ConfigDict, prefix: str = "prompts") -> None:
  if cfg.task not in lab_rewards.TASKS:
    raise ValueError(f"{prefix}.task must be one of {lab_rewards.TASKS}, got {cfg.task!r}")
  if cfg.split not in SPLITS:
    raise ValueError(f"{prefix}.split must be one of {SPLITS}, got {cfg.split!r}")
  if cfg.num <= 0 or cfg.batch_size <= 0:
    raise ValueError(f"{prefix}.num ({cfg.num}) and {prefix}.batch_size ({cfg.batch_size}) must be positive")
  if cfg.num % cfg.batch_size:
    raise ValueError(f"{prefix}.num ({cfg.num}) must be a multiple of {prefix}.batch_size ({cfg.batch_size})")


def validate_and_derive(config: ml_collections.ConfigDict, num_devices: Optional[int] = None,
                        num_processes: Optional[int] = None) -> Derived:
  """Fails fast with a message naming the field; works for any topology without devices."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  del num_processes  # every process samples all rows; nothing is split by host
  shape = sharding.resolve_mesh_shape({"data": config.mesh.data, "fsdp": config.mesh.fsdp,
                                       "tensor": config.mesh.tensor}, num_devices)
  mesh_shape = dict(zip(sharding.MESH_AXES, shape))
  ns = tuple(config.best_of_n.num_samples)
  if not ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in ns) or len(set(ns)) != len(ns):
    raise ValueError(f"best_of_n.num_samples must be distinct positive ints, got {ns}")
  ns = tuple(sorted(ns))
  if config.best_of_n.num_heldout < 0:
    raise ValueError(f"best_of_n.num_heldout must be >= 0, got {config.best_of_n.num_heldout}")
  validate_prompts_section(config.prompts)
  validate_sampling_section(config.sampling, ns[-1])
  check_reward_name(config.reward.source, config.prompts.task)
  if config.export.selection not in rejection_sampling.SELECTION_MODES:
    raise ValueError(f"export.selection must be one of {rejection_sampling.SELECTION_MODES}, "
                     f"got {config.export.selection!r}")
  if config.export.selection == "threshold" and config.export.threshold is None:
    raise ValueError("export.selection='threshold' needs export.threshold")
  rows = config.prompts.batch_size * (ns[-1] + config.best_of_n.num_heldout)
  dp = mesh_shape["data"] * mesh_shape["fsdp"]
  if rows % dp:
    raise ValueError(f"prompts.batch_size * (max best_of_n.num_samples + best_of_n.num_heldout) = {rows} rows "
                     f"per sampler call must be divisible by the data-parallel size {dp}")
  return Derived(mesh_shape=mesh_shape, num_samples=ns, max_n=ns[-1], rows_per_call=rows)


def sampling_config(cfg: ml_collections.ConfigDict, num_samples: int) -> sampling.SamplingConfig:
  return sampling.SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                 top_p=cfg.top_p, num_samples=num_samples).validate()


# ---------------------------------------------------------------------------------------------
# Sampling in chunks.
# ---------------------------------------------------------------------------------------------


class HostSampler(sampling.Sampler):
  """A Sampler whose output is gathered to every process (a no-op copy with one process)."""

  def generate(self, *args, **kwargs) -> sampling.SampleOutput:
    out = super().generate(*args, **kwargs)
    return run_setup.to_host(out) if jax.process_count() > 1 else out


def merge_results(results: Sequence[bon.BestOfNResult]) -> bon.BestOfNResult:
  """One BestOfNResult from chunks over disjoint prompts (same N, M, sampling and reward)."""
  if not results:
    raise ValueError("merge_results needs at least one result")
  first = results[0]
  for r in results[1:]:
    if (r.num_samples, r.sampling, r.reward_name, r.policy_id) != (first.num_samples, first.sampling,
                                                                   first.reward_name, first.policy_id):
      raise ValueError("results to merge differ in N, sampling, reward or policy")
  cat = lambda name: np.concatenate([getattr(r, name) for r in results], axis=0)  # noqa: E731
  heldout = None if first.heldout_scores_BxM is None else cat("heldout_scores_BxM")
  return dataclasses.replace(
      first, prompts=sum((r.prompts for r in results), ()), prompt_ids=sum((r.prompt_ids for r in results), ()),
      responses=sum((r.responses for r in results), ()), tokens_BxNxS=cat("tokens_BxNxS"),
      mask_BxNxS=cat("mask_BxNxS"), ended_with_eos_BxN=cat("ended_with_eos_BxN"), scores_BxN=cat("scores_BxN"),
      logprobs_BxN=cat("logprobs_BxN"), best_index_B=cat("best_index_B"), heldout_scores_BxM=heldout,
      metrics={})


def chunked_best_of_n(policy: policy_loading.LoadedPolicy, prompts: Sequence[PromptExample], key: jax.Array,
                      cfg: sampling.SamplingConfig, *, reward: reward_source.RewardSource, num_heldout: int,
                      batch_size: int, sampler: Optional[sampling.Sampler] = None) -> bon.BestOfNResult:
  """`best_of_n.best_of_n` over `batch_size` prompts at a time (chunk i uses fold_in(key, i))."""
  sampler = sampler or HostSampler(policy.model, eos_id=policy.tokenizer.eos_id, pad_id=policy.tokenizer.pad_id)
  results = []
  for i, start in enumerate(range(0, len(prompts), batch_size)):
    results.append(bon.best_of_n(sampler, policy.params, prompts[start:start + batch_size],
                                 jax.random.fold_in(key, i), cfg, tokenizer=policy.tokenizer, reward=reward,
                                 num_heldout=num_heldout, policy_id=policy.artifact_id))
    logger.info("best-of-N: %d / %d prompts sampled and scored", min(start + batch_size, len(prompts)), len(prompts))
  merged = merge_results(results)
  return dataclasses.replace(merged, key_data=tuple(int(v) for v in np.asarray(jax.random.key_data(key)).ravel()))


def response_texts(result: bon.BestOfNResult) -> list[str]:
  """The B * N responses, prompt-major (row b * N + n)."""
  return [t for row in result.responses for t in row]


def ground_truth(result: bon.BestOfNResult, task: str, proxy: reward_source.RewardSource) -> np.ndarray:
  """[B, N] gold (reviews) or verifier (arithmetic) rewards; the proxy's scores when it is that source."""
  gold = lab_rewards.gold_source(task)
  if getattr(proxy, "name", None) == gold.name:
    return result.scores_BxN.astype(np.float64)
  prompts = [prompt_text(p) for p in result.prompts for _ in range(result.num_samples)]
  scores = lab_rewards.score_texts(gold, prompts, response_texts(result))
  return scores.reshape(result.scores_BxN.shape).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# The curve.
# ---------------------------------------------------------------------------------------------


def _mean_and_stderr(values_B: np.ndarray) -> tuple[float, float]:
  values_B = np.asarray(values_B, np.float64)
  stderr = float(np.std(values_B, ddof=1) / math.sqrt(values_B.size)) if values_B.size > 1 else 0.0
  return float(np.mean(values_B)), stderr


def best_of_n_curve(proxy_BxN: np.ndarray, gold_BxN: np.ndarray, lengths_BxN: np.ndarray,
                    heldout_BxM: Optional[np.ndarray], ns: Sequence[int]) -> list[dict[str, float]]:
  """One row per N: proxy and gold of the proxy-best sample, gains in base-std units, KLs."""
  proxy_BxN = np.asarray(proxy_BxN, np.float64)
  gold_BxN = np.asarray(gold_BxN, np.float64)
  proxy_std, gold_std = float(np.std(proxy_BxN)), float(np.std(gold_BxN))
  rows = []
  for n in ns:
    proxy_mean, proxy_se = _mean_and_stderr(expected_best_of_k(proxy_BxN, proxy_BxN, n))
    gold_mean, gold_se = _mean_and_stderr(expected_best_of_k(proxy_BxN, gold_BxN, n))
    row = {"n": int(n), "kl/analytic": float(best_of_n_kl(n)),
           "proxy/best_mean": proxy_mean, "proxy/best_stderr": proxy_se,
           "gold/best_mean": gold_mean, "gold/best_stderr": gold_se,
           "length/best_mean": float(np.mean(expected_best_of_k(proxy_BxN, lengths_BxN, n)))}
    if heldout_BxM is not None:
      selected = np.take_along_axis(proxy_BxN[:, :n], bon.select_best(proxy_BxN[:, :n])[:, None], axis=1)[:, 0]
      est = bon.empirical_best_of_n_kl(selected, heldout_BxM, n)
      row["kl/empirical"], row["kl/empirical_stderr"] = est.kl, est.stderr
    rows.append(row)
  base = rows[0] if ns[0] == 1 else None
  for row in rows:  # gains relative to N = 1 (the base policy's mean), in units of the base std
    p1 = base["proxy/best_mean"] if base else float(np.mean(proxy_BxN))
    g1 = base["gold/best_mean"] if base else float(np.mean(gold_BxN))
    row["proxy/gain_std"] = (row["proxy/best_mean"] - p1) / proxy_std if proxy_std > 0 else 0.0
    row["gold/gain_std"] = (row["gold/best_mean"] - g1) / gold_std if gold_std > 0 else 0.0
  return rows


def plot_best_of_n(rows: Sequence[dict[str, float]], out_dir: Any, *, proxy_name: str, gold_name: str,
                   title: str) -> list[str]:
  """reward_vs_n.png, reward_vs_kl.png and gain_vs_kl.png; returns their paths."""
  n = np.array([r["n"] for r in rows], np.float64)
  kl = np.array([r["kl/analytic"] for r in rows])
  col = lambda k: np.array([r[k] for r in rows])  # noqa: E731
  same = proxy_name == gold_name
  raw = {f"gold ({gold_name})": col("gold/best_mean")}
  gains = {f"gold ({gold_name})": col("gold/gain_std")}
  if not same:
    raw[f"proxy ({proxy_name})"] = col("proxy/best_mean")
    gains[f"proxy ({proxy_name})"] = col("proxy/gain_std")
  out_dir = run_setup.workdir_path(out_dir)
  paths = [plots.plot_curves({k: (n, v) for k, v in raw.items()}, out_dir / "reward_vs_n.png", "N (samples)",
                             "reward of the best-of-N sample", title=title, logx=True),
           plots.plot_curves({k: (kl, v) for k, v in raw.items()}, out_dir / "reward_vs_kl.png",
                             "KL(best-of-N || policy), analytic (nats)", "reward of the best-of-N sample",
                             title=title),
           plots.plot_curves({k: (kl, v) for k, v in gains.items()}, out_dir / "gain_vs_kl.png",
                             "KL(best-of-N || policy), analytic (nats)", "gain over N=1 (base std units)",
                             title=title)]
  return [str(p) for p in paths]


def sample_metrics(result: bon.BestOfNResult) -> dict[str, float]:
  """Slash-named facts about the N_max samples (means over all B * N samples unless named)."""
  lengths_BxN = np.sum(result.mask_BxNxS, axis=2)
  distinct = [len({tuple(result.response_tokens(b, i).tolist()) for i in range(result.num_samples)})
              / result.num_samples for b in range(len(result.prompts))]
  best = result.best_scores_B.astype(np.float64)
  return {"samples/eos_fraction": float(np.mean(result.ended_with_eos_BxN)),
          "samples/length_mean": float(np.mean(lengths_BxN)),
          "samples/distinct_fraction": float(np.mean(distinct)),  # distinct responses / N, mean over prompts
          "samples/top_tie_fraction": float(np.mean(np.sum(result.scores_BxN == best[:, None], axis=1) > 1)),
          "samples/logprob_mean": float(np.mean(result.logprobs_BxN))}


def jsonable(value: Any) -> Any:
  """Nested floats with NaN / inf replaced by None (strict JSON)."""
  if isinstance(value, dict):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def export_dataset(result: bon.BestOfNResult, out_dir: Any, *, mode: str, threshold: Optional[float],
                   require_eos: bool, provenance: dict[str, Any], tokenizer_id: str) -> dict[str, Any]:
  """Selected samples -> rejection-sampling SFT dataset; {"manifest_path", "dataset_id", "num_examples"}
  or {"skipped": reason} when no sample passes the filters (`rejection_sampling.select_for_sft`)."""
  examples = rejection_sampling.select_for_sft(result, mode=mode, threshold=threshold, require_eos=require_eos)
  if not examples:
    reason = "no selected sample passed the filters (EOS required, non-empty, threshold)"
    logger.warning("best-of-N export skipped: %s", reason)
    return {"skipped": reason, "num_examples": 0}
  if run_setup.is_main_process():
    path = rejection_sampling.write_rejection_sampling_dataset(examples, out_dir, provenance,
                                                               tokenizer_id=tokenizer_id)
    dataset_id = json.loads(path.read_text())["dataset_id"]
  else:
    path, dataset_id = out_dir, None
  run_setup.sync_hosts("best_of_n_export")
  return {"manifest_path": str(path), "dataset_id": dataset_id, "num_examples": len(examples)}


def write_samples(path: Any, result: bon.BestOfNResult, gold_BxN: np.ndarray) -> None:
  lines = [json.dumps({"prompt_id": pid, "prompt": prompt_text(p), "responses": list(result.responses[b]),
                       "proxy": result.scores_BxN[b].astype(float).tolist(), "gold": gold_BxN[b].tolist(),
                       "best_index": int(result.best_index_B[b])})
           for b, (p, pid) in enumerate(zip(result.prompts, result.prompt_ids))]
  run_setup.write_json_side_file(path, "\n".join(lines) + "\n")


def run_best_of_n(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs the best-of-N experiment (module docstring); returns the results written to results.json."""
  workdir = run_setup.workdir_path(workdir)
  derived = validate_and_derive(config)
  if not config.policy:
    raise ValueError("policy is empty: pass the artifact id of a registered policy, e.g. "
                     "--config.policy=sft_policy@3f2a9c01b2d4")
  workdir.mkdir(parents=True, exist_ok=True)
  registry_path = run_setup.registry_dir(workdir, config.registry_dir)
  mesh = run_setup.mesh_from_config(config.mesh)
  policy = policy_loading.load_policy(registry_path, config.policy, mesh=mesh,
                                      rules=run_setup.rules_from_config(config.mesh))
  proxy = lab_rewards.make_reward_source(config.reward.source, registry_dir=registry_path,
                                         policy_tokenizer_id=policy.tokenizer.id,
                                         remote_model=config.reward.remote_model,
                                         remote_timeout_s=config.reward.remote_timeout_s)
  prompts = lab_rewards.lab_prompts(config.prompts.task, config.prompts.split, config.prompts.num,
                                    seed=config.prompts.lab_seed)
  cfg = sampling_config(config.sampling, derived.max_n)
  result = chunked_best_of_n(policy, prompts, jax.random.key(config.seed), cfg, reward=proxy,
                             num_heldout=config.best_of_n.num_heldout, batch_size=config.prompts.batch_size)
  gold_BxN = ground_truth(result, config.prompts.task, proxy)
  lengths_BxN = np.sum(result.mask_BxNxS, axis=2).astype(np.float64)
  rows = best_of_n_curve(result.scores_BxN, gold_BxN, lengths_BxN, result.heldout_scores_BxM, derived.num_samples)
  gold_name = lab_rewards.gold_source(config.prompts.task).name
  proxy_flat, gold_flat = result.scores_BxN.astype(np.float64).ravel(), gold_BxN.ravel()
  results = {
      "policy": policy.artifact_id, "reward_source": proxy.name, "gold_source": gold_name,
      "gold_is_proxy": proxy.name == gold_name, "task": config.prompts.task, "split": config.prompts.split,
      "num_prompts": len(prompts), "num_heldout": config.best_of_n.num_heldout, "seed": config.seed,
      "sampling": dataclasses.asdict(cfg),
      "base": {"proxy_mean": float(proxy_flat.mean()), "proxy_std": float(proxy_flat.std()),
               "gold_mean": float(gold_flat.mean()), "gold_std": float(gold_flat.std()),
               "proxy_gold_spearman": spearman(proxy_flat, gold_flat) if proxy_flat.size > 1 else float("nan")},
      "per_n": rows, "metrics": sample_metrics(result),
  }
  if config.export.enabled:
    provenance = {"stage": "best_of_n", "policy": policy.artifact_id, "reward_source": proxy.name,
                  "prompts": {"task": config.prompts.task, "split": config.prompts.split,
                              "num": config.prompts.num, "lab_seed": config.prompts.lab_seed},
                  "num_samples": derived.max_n, "seed": config.seed}
    results["dataset"] = export_dataset(result, workdir / "dataset", mode=config.export.selection,
                                        threshold=config.export.threshold, require_eos=config.export.require_eos,
                                        provenance=provenance, tokenizer_id=policy.tokenizer.id)
  if run_setup.is_main_process():
    write_samples(workdir / "samples.jsonl", result, gold_BxN)
    if config.plot:
      results["plots"] = plot_best_of_n(rows, workdir, proxy_name=proxy.name, gold_name=gold_name,
                                        title=f"best-of-N, {policy.artifact_id}")
  results = jsonable(results)
  run_setup.write_json_side_file(workdir / "results.json", json.dumps(results, indent=2))
  logger.info("best-of-N: %s", {r["n"]: (round(r["proxy/best_mean"], 3), round(r["gold/best_mean"], 3))
                                for r in rows})
  return results
