"""Lab figure: the gold reward of best-of-N rises with N while the proxy (reward-model) reward rises faster.

Best-of-N against a learned reward model (the proxy) is the simplest over-optimisation experiment
(Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization"): as N grows, the proxy score of
the selected sample keeps climbing while its gold reward climbs more slowly (and eventually falls),
because selection exploits the proxy's errors. In the lab the gold reward is known exactly.

  python scripts/lab_best_of_n.py --registry /tmp/sft_default/artifacts \
      --policy sft_policy@291333c89c8e --reward_model reward_model@<12 hex> --workdir /tmp/lab_best_of_n
  ... --train_reward_model            # first train a proxy RM from the policy (configs/reward_model.py)
  ... --train_reward_model --rm_preset=test --rm_steps=400   # a small RM from scratch (CPU minutes)

Without a reward model (neither flag) the figures show the gold reward only and say so. One sampler
pass draws N_max + M samples per held-out prompt; both rewards score every sample, and the same
samples give three curves against the analytic KL log N - (N - 1) / N:

  proxy, RM-selected   the reward model's score of its own best-of-N choice
  gold, RM-selected    the gold reward of that same choice (what the user gets)
  gold, gold-selected  best-of-N by the gold reward itself (the ceiling for this policy)

Rewards are shown as gains over N = 1 in units of each reward's standard deviation over the base
samples, so the two scales are comparable. Outputs in --workdir: the best-of-N run
(`results.json`, `samples.jsonl`, its own plots, the exported dataset), `lab_gain_vs_kl.png`,
`lab_gold_vs_n.png` and `lab_best_of_n.json` (every number plotted).
"""
import json
import logging
import pathlib

from absl import app, flags
import numpy as np

from rlhf_jax.algorithms import best_of_n_run
from rlhf_jax.config.sections import load_sibling
from rlhf_jax.evaluation import plots
from rlhf_jax.experiment import start

_REGISTRY = flags.DEFINE_string("registry", "/tmp/sft_default/artifacts", "Artifact registry holding the policy.")
_POLICY = flags.DEFINE_string("policy", "", "Policy artifact id (required).")
_REWARD_MODEL = flags.DEFINE_string("reward_model", "", "Proxy reward-model artifact id ('' = gold only).")
_TRAIN_RM = flags.DEFINE_bool("train_reward_model", False, "Train a proxy RM from the policy first.")
_RM_STEPS = flags.DEFINE_integer("rm_steps", 500, "Optimiser steps of that RM (early stopping may end sooner).")
_RM_PRESET = flags.DEFINE_string("rm_preset", "", "Train that RM from scratch with this decoder preset (e.g. "
                                 "'test': minutes on a CPU); '' starts its trunk from the policy.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/lab_best_of_n", "Output folder.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 128, "Held-out review prompts.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Prompts per sampler call.")
_NS = flags.DEFINE_list("ns", ["1", "2", "4", "8", "16", "32"], "N values.")
_HELDOUT = flags.DEFINE_integer("num_heldout", 64, "Held-out base samples per prompt (empirical KL).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "Response budget in tokens.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"


def train_proxy(workdir: pathlib.Path) -> str:
  """Trains a reward model on the lab's (noisy, biased) annotator preferences: its trunk from the
  policy, or from scratch with --rm_preset (then with its own tokenizer; it scores texts)."""
  from rlhf_jax import models  # pylint: disable=g-import-not-at-top
  from rlhf_jax.algorithms import reward_model_train  # pylint: disable=g-import-not-at-top
  config = load_sibling(str(CONFIGS / "best_of_n.py"), "reward_model").get_config("")
  config.registry_dir = _REGISTRY.value
  config.train.total_steps = config.optimizer.total_steps = _RM_STEPS.value
  if _RM_PRESET.value:
    for key, value in models.PRESETS[_RM_PRESET.value].to_dict().items():
      if key != "vocab_size":
        config.model[key] = value
    config.model.preset = _RM_PRESET.value
    config.optimizer.lr = 1e-3
  else:
    config.init.policy_artifact = _POLICY.value
  return reward_model_train.train_reward_model(config, workdir / "reward_model")["artifact_id"]


def main(argv):
  del argv
  start()
  if not _POLICY.value:
    raise app.UsageError("--policy is required")
  workdir = pathlib.Path(_WORKDIR.value)
  rm_id = _REWARD_MODEL.value or (train_proxy(workdir) if _TRAIN_RM.value else "")

  config = load_sibling(str(CONFIGS / "best_of_n.py"), "best_of_n").get_config("")
  config.registry_dir = _REGISTRY.value
  config.policy = _POLICY.value
  config.seed = _SEED.value
  config.prompts.num, config.prompts.batch_size = _NUM_PROMPTS.value, _BATCH.value
  config.best_of_n.num_samples = tuple(int(n) for n in _NS.value)
  config.best_of_n.num_heldout = _HELDOUT.value
  config.sampling.max_new_tokens = _MAX_NEW.value
  config.reward.source = f"reward_model:{rm_id}" if rm_id else "gold"
  results = best_of_n_run.run_best_of_n(config, workdir / "best_of_n")

  samples = [json.loads(l) for l in (workdir / "best_of_n" / "samples.jsonl").read_text().splitlines()]
  gold = np.array([s["gold"] for s in samples], np.float64)
  lengths = np.array([[len(r.split()) for r in s["responses"]] for s in samples], np.float64)
  ns = sorted(config.best_of_n.num_samples)
  oracle = best_of_n_run.best_of_n_curve(gold, gold, lengths, None, ns)  # best-of-N by gold itself
  rows = results["per_n"]
  kl = np.array([r["kl/analytic"] for r in rows])
  n = np.array(ns, np.float64)
  series = {"gold, gold-selected (ceiling)": (kl, [r["gold/gain_std"] for r in oracle])}
  if rm_id:
    series["proxy (RM), RM-selected"] = (kl, [r["proxy/gain_std"] for r in rows])
    series["gold, RM-selected"] = (kl, [r["gold/gain_std"] for r in rows])
  note = "" if rm_id else " (no reward model: gold only)"
  figures = [
      plots.plot_curves(series, workdir / "lab_gain_vs_kl.png", "KL(best-of-N || policy), analytic (nats)",
                        "gain over N=1 (base std units)", title=f"best-of-N in the lab{note}"),
      plots.plot_curves({k: (n, [r["gold/best_mean"] for r in v]) for k, v in
                         {"gold, gold-selected": oracle, **({"gold, RM-selected": rows} if rm_id else {})}.items()},
                        workdir / "lab_gold_vs_n.png", "N", "gold reward of the best-of-N sample",
                        title=f"gold reward vs N{note}", logx=True)]
  table = [{"n": r["n"], "kl_analytic": r["kl/analytic"], "kl_empirical": r.get("kl/empirical"),
            "proxy_best": r["proxy/best_mean"] if rm_id else None,
            "proxy_gain_std": r["proxy/gain_std"] if rm_id else None,
            "gold_best_rm_selected": r["gold/best_mean"] if rm_id else None,
            "gold_gain_std_rm_selected": r["gold/gain_std"] if rm_id else None,
            "gold_best_gold_selected": o["gold/best_mean"], "gold_gain_std_gold_selected": o["gold/gain_std"],
            "tokens_best": r["length/best_mean"]} for r, o in zip(rows, oracle)]
  summary = {"policy": config.policy, "reward_model": rm_id or None, "num_prompts": config.prompts.num,
             "num_heldout": config.best_of_n.num_heldout, "base": results["base"], "per_n": table,
             "figures": [str(f) for f in figures]}
  (workdir / "lab_best_of_n.json").write_text(json.dumps(best_of_n_run.jsonable(summary), indent=2))
  logging.info("lab best-of-N%s:\n%s", note, "\n".join(json.dumps(best_of_n_run.jsonable(t)) for t in table))


if __name__ == "__main__":
  app.run(main)
