"""Lab study: PPO raises the gold reward; a weak reward model is over-optimised; GRPO learns arithmetic.

RLHF = Reinforcement Learning from Human Feedback; PPO = Proximal Policy Optimization; GRPO = Group
Relative Policy Optimization; SFT = Supervised Fine-Tuning; RM = reward model; KL = Kullback-Leibler.

Stages, each a sibling directory of --workdir sharing one artifact registry (a finished stage is
skipped when the script is re-run):

  sft        SFT policy on the lab's review (and arithmetic) demonstrations      configs/sft.py
  rm_good    RM from the SFT trunk on many annotator-labelled pairs              configs/reward_model.py
  rm_weak    RM on few pairs and few steps: a poor proxy of the gold reward      configs/reward_model.py
  ppo_good   PPO against rm_good, adaptive KL: the gold reward should rise       configs/ppo.py
  ppo_weak   PPO against rm_weak with a small fixed beta: the proxy rises while the gold reward
             rises, then falls past some KL (reward over-optimisation, Gao et al. 2023)
  grpo       GRPO on the arithmetic task with the exact verifier: accuracy should rise  configs/grpo.py
  ppo_overopt  PPO against rm_good with a small fixed beta, for longer: the gold reward rises with the
             proxy at first, then falls while the proxy keeps rising (over-optimisation of a decent RM)

Outputs in --workdir: `overoptimisation.png` (gold and proxy reward against KL to the reference, for
ppo_good, ppo_overopt and ppo_weak) and `lab_ppo_summary.json` (the figures: training curves' start / end /
max after smoothing, and held-out evaluations of the exported policies: gold reward of reviews
sampled at temperature 0.7, greedy verifier accuracy on arithmetic).

  python scripts/lab_ppo_overoptimisation.py --workdir runs/lab_ppo            # ~1 h on 2 CPU cores
  python scripts/lab_ppo_overoptimisation.py --workdir /tmp/lab_ppo --scale=test  # plumbing check
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from rlhf_jax.algorithms import metrics as metrics_lib  # noqa: E402
from rlhf_jax.config import families  # noqa: E402
from rlhf_jax.evaluation import plots  # noqa: E402

logger = logging.getLogger("lab_ppo")
STAGES = ("sft", "rm_good", "rm_weak", "ppo_good", "ppo_weak", "grpo", "ppo_overopt")


def run_stage(workdir: pathlib.Path, name: str, family: str, variant: str, overrides: dict) -> dict:
  """Runs configs/<family>.py:<variant> with dotted overrides in <workdir>/<name>, unless done."""
  stage_dir = workdir / name
  summary_path = stage_dir / "summary.json"
  if summary_path.exists():
    logger.info("stage %s already done: %s", name, summary_path)
    return json.loads(summary_path.read_text())
  fam = families.load_family(REPO / "configs" / f"{family}.py")
  config = fam.get_config(variant)
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    section = config
    for p in parents:
      section = section[p]
    section[leaf] = value
  config.registry_dir = str(workdir / "artifacts")
  logger.info("stage %s: %s %s", name, fam.trainer_spec, overrides)
  summary = fam.trainer()(config, stage_dir)
  summary_path.write_text(json.dumps(summary, indent=2, default=str))
  return summary


def curves(workdir: pathlib.Path, name: str, window: int) -> dict[str, np.ndarray]:
  records = metrics_lib.read_jsonl(workdir / name / "metrics.jsonl")
  get = lambda k: np.array([r.get(k, np.nan) for r in records], np.float64)  # noqa: E731
  out = {"kl": get("kl/ref"), "proxy": get("reward/raw_score"), "gold": get("monitor/gold"),
         "beta": get("kl/beta"), "length": get("rollout/response_length")}
  return {k: plots.moving_average(v, window) for k, v in out.items()}


def plot(workdir: pathlib.Path, runs: dict[str, dict[str, np.ndarray]]) -> pathlib.Path:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
  for ax, (name, c) in zip(axes[0], runs.items()):
    ax.plot(c["kl"], c["gold"], color="tab:orange", label="gold reward (lab)")
    ax.set_xlabel("KL(policy || SFT reference), nats per response")
    ax.set_ylabel("gold reward", color="tab:orange")
    twin = ax.twinx()
    twin.plot(c["kl"], c["proxy"], color="tab:blue", label="proxy (reward model)")
    twin.set_ylabel("proxy reward-model score", color="tab:blue")
    ax.set_title(name)
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [l.get_label() for l in lines], loc="lower left")
  fig.tight_layout()
  path = workdir / "overoptimisation.png"
  fig.savefig(path, dpi=120)
  return path


def heldout_eval(workdir: pathlib.Path, artifact_id: str, task: str, num: int, *,
                 temperature: float | None = None, num_samples: int = 1) -> float:
  """Mean gold reward (reviews; default temperature 0.7) or verifier accuracy (arithmetic; default
  greedy) of a policy artifact on the task's held-out "eval" prompts, over `num_samples` per prompt."""
  import jax  # pylint: disable=g-import-not-at-top
  from rlhf_jax import sampling  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms import lab_rewards, policy_loading  # pylint: disable=g-import-not-at-top
  from rlhf_jax.data import chat  # pylint: disable=g-import-not-at-top
  policy = policy_loading.load_policy(workdir / "artifacts", artifact_id)
  examples = lab_rewards.lab_prompts(task, "eval", num)
  ids = [chat.render_prompt(policy.tokenizer, e.prompt) for e in examples]
  if temperature is None:
    temperature = 0.7 if task == "reviews" else 0.0
  cfg = sampling.SamplingConfig(max_new_tokens=48 if task == "reviews" else 16, temperature=temperature,
                                num_samples=num_samples)
  out = policy_loading.make_sampler(policy).generate(policy.params, ids, jax.random.key(0), cfg)
  responses = policy.tokenizer.decode_batch(np.asarray(out.tokens_BxS).tolist())
  prompts = [e.prompt for e in examples for _ in range(num_samples)]  # the samples of a prompt are adjacent
  scores = lab_rewards.score_texts(lab_rewards.gold_source(task), prompts, responses)
  return float(np.mean(scores))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/lab_ppo")
  parser.add_argument("--scale", choices=("default", "test"), default="default")
  parser.add_argument("--sft_steps", type=int, default=600)
  parser.add_argument("--rm_steps", type=int, default=400)
  parser.add_argument("--weak_rm_pairs", type=int, default=200)
  parser.add_argument("--weak_rm_steps", type=int, default=25)
  parser.add_argument("--ppo_iterations", type=int, default=100)
  parser.add_argument("--weak_beta", type=float, default=0.002)
  # Slow enough that the KL grows over tens of iterations: the rise of the gold reward happens at small KL.
  parser.add_argument("--weak_lr", type=float, default=1e-5)
  parser.add_argument("--weak_prompts", type=int, default=32)  # prompts per iteration: less noisy curves
  parser.add_argument("--overopt_iterations", type=int, default=150)
  parser.add_argument("--overopt_beta", type=float, default=0.002)
  parser.add_argument("--grpo_iterations", type=int, default=80)
  parser.add_argument("--grpo_lr", type=float, default=5e-5)
  parser.add_argument("--grpo_prompts", type=int, default=32)  # prompts per iteration (x 8 samples)
  parser.add_argument("--eval_prompts", type=int, default=128)
  parser.add_argument("--until", choices=STAGES, default=None,
                      help="stop after this stage (e.g. rm_weak: inspect the reward models before PPO)")
  args = parser.parse_args(argv)
  # force: an imported library may already have put a handler on the root logger (then a plain
  # basicConfig does nothing and this script's progress lines would be dropped).
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax narrates every checkpoint phase at INFO
  workdir = pathlib.Path(args.workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  test = args.scale == "test"
  v = "test" if test else ""

  def stage(name: str, family: str, overrides: dict) -> dict:
    summary = run_stage(workdir, name, family, v, overrides)
    if name == args.until:
      raise _StopAfter(name)
    return summary

  try:
    return _run_all(args, workdir, stage, test)
  except _StopAfter as stop:
    logger.info("stopped after stage %s (--until); re-run without --until to continue", stop)
    return 0


class _StopAfter(Exception):
  pass


def _run_all(args, workdir: pathlib.Path, stage, test: bool) -> int:
  steps = (lambda n: min(n, 4)) if test else (lambda n: n)  # noqa: E731
  sft = stage("sft", "sft", {
      "train.total_steps": steps(args.sft_steps), "optimizer.total_steps": steps(args.sft_steps),
      "lab.num_arithmetic_sft_train": 64 if test else 3_000, "lab.num_arithmetic_sft_eval": 16 if test else 128})
  policy = sft["artifact_id"]
  rm_good = stage("rm_good", "reward_model", {
      "init.policy_artifact": policy, "train.total_steps": steps(args.rm_steps),
      "optimizer.total_steps": steps(args.rm_steps)})
  rm_weak = stage("rm_weak", "reward_model", {
      "name": "weak_reward_model", "init.policy_artifact": policy, "lab.num_preferences_train": args.weak_rm_pairs,
      "train.total_steps": steps(args.weak_rm_steps), "optimizer.total_steps": steps(args.weak_rm_steps),
      "train.early_stopping_metric": ""})
  ppo_common = {"init.policy_artifact": policy, "train.sample_every": 10, "checkpoint.every": 1000,
                "reward.monitor_gold": True}
  ppo_good = stage("ppo_good", "ppo", {
      **ppo_common, "reward.source": f"reward_model:{rm_good['artifact_id']}",
      "train.total_steps": steps(args.ppo_iterations), "kl.init_beta": 0.05, "kl.target": 6.0})
  ppo_weak = stage("ppo_weak", "ppo", {
      **ppo_common, "reward.source": f"reward_model:{rm_weak['artifact_id']}",
      "train.total_steps": steps(args.ppo_iterations), "kl.controller": "fixed", "kl.init_beta": args.weak_beta,
      "optimizer.lr": args.weak_lr, "rollout.num_prompts": 8 if test else args.weak_prompts})
  grpo = stage("grpo", "grpo", {
      "init.policy_artifact": policy, "train.total_steps": steps(args.grpo_iterations), "train.sample_every": 10,
      "checkpoint.every": 1000, "optimizer.lr": args.grpo_lr,
      "rollout.num_prompts": 8 if test else args.grpo_prompts, "algo.num_minibatches": 2 if test else 4})
  ppo_overopt = stage("ppo_overopt", "ppo", {
      **ppo_common, "reward.source": f"reward_model:{rm_good['artifact_id']}",
      "train.total_steps": steps(args.overopt_iterations), "kl.controller": "fixed",
      "kl.init_beta": args.overopt_beta})

  window = 1 if test else 5
  titles = {"ppo_good": "lab RM, adaptive beta (target KL 6)",
            "ppo_overopt": f"lab RM, fixed beta {args.overopt_beta:g}",
            "ppo_weak": f"weak RM, fixed beta {args.weak_beta:g}"}
  runs = {name: curves(workdir, name, window) for name in titles}
  png = plot(workdir, {f"{name} ({title})": runs[name] for name, title in titles.items()})
  grpo_acc = curves(workdir, "grpo", window)["proxy"]

  def ends(c, key):
    return {"start": float(c[key][0]), "end": float(c[key][-1]), "max": float(np.nanmax(c[key]))}

  summary = {
      "stages": {"sft": policy, "rm_good": rm_good["artifact_id"], "rm_weak": rm_weak["artifact_id"],
                 "ppo_good": ppo_good["artifact_id"], "ppo_weak": ppo_weak["artifact_id"],
                 "ppo_overopt": ppo_overopt["artifact_id"], "grpo": grpo["artifact_id"]},
      "reward_models": {name: {k: rm["test"][k] for k in ("accuracy", "auc", "gold/accuracy", "gold/spearman")}
                        for name, rm in (("rm_good", rm_good), ("rm_weak", rm_weak))},
      "grpo_accuracy": {"start": float(grpo_acc[0]), "end": float(grpo_acc[-1]), "max": float(np.nanmax(grpo_acc))},
      "smoothing_window": window, "plot": str(png),
  }
  for name, c in runs.items():
    peak = int(np.nanargmax(c["gold"]))
    summary[name] = {"gold": ends(c, "gold"), "proxy": ends(c, "proxy"), "kl_end": float(c["kl"][-1]),
                     "kl_at_gold_peak": float(c["kl"][peak]), "gold_peak": float(c["gold"][peak])}
  n = 8 if test else args.eval_prompts
  summary["heldout"] = {
      "gold_reviews": {name: heldout_eval(workdir, summary["stages"][name], "reviews", n)
                       for name in ("sft", "ppo_good", "ppo_overopt", "ppo_weak")},
      "arithmetic_greedy_accuracy": {name: heldout_eval(workdir, summary["stages"][name], "arithmetic", n)
                                     for name in ("sft", "grpo")},
      # GRPO trains on samples at temperature 1; its gain shows there first (it sharpens the policy).
      "arithmetic_sampled_accuracy_t1_x4": {
          name: heldout_eval(workdir, summary["stages"][name], "arithmetic", n, temperature=1.0, num_samples=4)
          for name in ("sft", "grpo")},
      "num_prompts": n}
  (workdir / "lab_ppo_summary.json").write_text(json.dumps(summary, indent=2))
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
