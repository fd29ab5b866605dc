"""Lab sweep (not a test): DPO from the SFT policy on the lab's annotator preferences, several betas.

DPO = Direct Preference Optimization, SFT = supervised fine-tuning, KL = Kullback-Leibler divergence.
Prints, per beta, the KL of the trained policy from the SFT reference (estimated on samples for
held-out prompts) and the gold reward of those samples, next to the SFT policy's own numbers, and
writes everything to `<workdir>/sweep.json`.

  python scripts/lab_dpo_sweep.py --workdir runs/dpo_sweep                 # trains SFT first
  python scripts/lab_dpo_sweep.py --workdir runs/dpo_sweep --sft_artifact sft_policy@1a2b3c4d5e6f
  python scripts/lab_dpo_sweep.py --workdir /tmp/sweep --variant test       # a smoke run

With the default `--reference_mode precomputed` every beta reuses one set of precomputed reference
log-probs (same dataset, same reference); `in_step` is cheaper when each run sees only a fraction
of the dataset.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf_jax.config import load_sibling  # noqa: E402  pylint: disable=wrong-import-position

_COLUMNS = (("KL k3", "eval/kl/k3"), ("KL full", "eval/kl/full"), ("gold", "eval/gold/total"),
            ("sentiment", "eval/gold/sentiment"), ("relevance", "eval/gold/relevance"),
            ("grammar", "eval/gold/grammar"), ("repetition", "eval/gold/repetition"),
            ("len pen", "eval/gold/length"), ("ending", "eval/gold/ending"),
            ("resp len", "eval/sample/length"), ("pref acc", "eval/pref/rewards/accuracy"))


def _row(name: str, metrics: dict) -> str:
  return f"{name:>12} " + " ".join(f"{metrics.get(key, float('nan')):>10.4f}"
                                   for _, key in _COLUMNS)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--variant", default="", help="config variant of configs/sft.py and dpo.py")
  parser.add_argument("--sft_artifact", default="", help="registered SFT policy; empty trains one")
  parser.add_argument("--sft_steps", type=int, default=0, help="override SFT steps (0: config)")
  parser.add_argument("--betas", default="0.03,0.1,0.3,1.0")
  parser.add_argument("--loss", default="dpo")
  parser.add_argument("--steps", type=int, default=0, help="override DPO steps (0: config)")
  parser.add_argument("--lr", type=float, default=0.0, help="override DPO learning rate (0: config)")
  parser.add_argument("--compute_dtype", default="", help="e.g. bfloat16 on GPU (empty: config)")
  parser.add_argument("--global_batch", type=int, default=0, help="pairs per step (0: config)")
  parser.add_argument("--eval_every", type=int, default=0, help="0: config")
  parser.add_argument("--eval_prompts", type=int, default=0, help="held-out prompts (0: config)")
  parser.add_argument("--reference_mode", default="precomputed", choices=("precomputed", "in_step"))
  args = parser.parse_args(argv)

  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "jax", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from rlhf_jax.algorithms import dpo_train, sft  # pylint: disable=g-import-not-at-top
  from rlhf_jax.experiment import start  # pylint: disable=g-import-not-at-top
  start()

  workdir = pathlib.Path(args.workdir).absolute()
  configs = ROOT / "configs" / "dpo.py"
  sft_summary = None
  artifact = args.sft_artifact
  if not artifact:
    sft_cfg = load_sibling(str(configs), "sft").get_config(args.variant)
    if args.sft_steps:
      sft_cfg.train.total_steps = sft_cfg.optimizer.total_steps = args.sft_steps
    if args.compute_dtype:
      sft_cfg.model.compute_dtype = sft_cfg.optimizer.compute_dtype = args.compute_dtype
    t0 = time.perf_counter()
    sft_summary = sft.train_sft(sft_cfg, workdir / "sft")
    artifact = sft_summary["artifact_id"]
    print(f"SFT artifact {artifact} in {time.perf_counter() - t0:.0f} s: "
          f"{json.dumps(sft_summary['final'])}", flush=True)

  results = {"sft_artifact": artifact, "sft": sft_summary and sft_summary["final"], "runs": []}
  for beta in [float(b) for b in args.betas.split(",")]:
    cfg = load_sibling(str(configs), "dpo").get_config(args.variant)
    cfg.init.policy_artifact = artifact
    cfg.init.allow_random_init = False
    cfg.algo.loss = args.loss
    cfg.algo.beta = beta
    cfg.reference.mode = args.reference_mode
    cfg.reference.cache_dir = str(workdir / "reference_logprobs")
    cfg.eval.at_start = not results["runs"]  # the SFT policy's numbers, once
    if args.steps:
      cfg.train.total_steps = cfg.optimizer.total_steps = args.steps
    if args.lr:
      cfg.optimizer.lr = args.lr
    if args.global_batch:
      cfg.batch.global_batch_size = args.global_batch
    if args.eval_every:
      cfg.train.eval_every = cfg.checkpoint.every = args.eval_every
    if args.eval_prompts:
      cfg.eval.num_prompts = args.eval_prompts
    if args.compute_dtype:
      cfg.model.compute_dtype = cfg.optimizer.compute_dtype = args.compute_dtype
    t0 = time.perf_counter()
    summary = dpo_train.train_dpo(cfg, workdir / f"{args.loss}_beta{beta:g}")
    if summary["initial"]:
      results["initial"] = summary["initial"]
    results["runs"].append({"beta": beta, "seconds": time.perf_counter() - t0,
                            "lr": cfg.optimizer.lr, "steps": cfg.train.total_steps,
                            "artifact_id": summary["artifact_id"], "final": summary["final"],
                            "examples": summary["examples"][:3]})
    print(f"beta={beta:g}: {json.dumps(summary['final'])}", flush=True)

  print("\n" + f"{'policy':>12} " + " ".join(f"{label:>10}" for label, _ in _COLUMNS))
  if "initial" in results:
    print(_row("SFT (ref)", results["initial"]))
  for run in results["runs"]:
    print(_row(f"beta={run['beta']:g}", run["final"]))
  (workdir / "sweep.json").write_text(json.dumps(results, indent=2))
  print(f"\nwritten {workdir / 'sweep.json'}")


if __name__ == "__main__":
  main()
