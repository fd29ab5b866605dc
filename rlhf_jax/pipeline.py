"""The main job: SFT -> reward model -> PPO, DPO and best-of-N from the same SFT policy ->
evaluation against the lab's gold reward -> a Markdown report with plots.

Each stage runs its family's own trainer in `<workdir>/<stage>` and hands its artifact id (never a
path) to the next through the shared registry `<workdir>/artifacts`. Re-running resumes: every
trainer resumes from its checkpoints and a finished stage re-exports the same artifact.
"""
from __future__ import annotations

import json
import logging
import pathlib
import shutil
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import ml_collections
import numpy as np

from rlhf_jax.algorithms import best_of_n_run, dpo_train, reward_model_train, sft
from rlhf_jax.algorithms.ppo import run as ppo_run
from rlhf_jax.evaluation import plots, suite

logger = logging.getLogger(__name__)
Results = dict[str, Any]


def _sft(cfg: ml_collections.ConfigDict, workdir: pathlib.Path, done: Results) -> Results:
  return sft.train_sft(cfg.sft, workdir / "sft")


def _reward_model(cfg, workdir, done):
  cfg.reward_model.init.policy_artifact = done["sft"]["artifact_id"]
  return reward_model_train.train_reward_model(cfg.reward_model, workdir / "reward_model")


def _ppo(cfg, workdir, done):
  cfg.ppo.init.policy_artifact = done["sft"]["artifact_id"]
  cfg.ppo.reward.source = f"reward_model:{done['reward_model']['artifact_id']}"
  return ppo_run.train_ppo(cfg.ppo, workdir / "ppo")


def _dpo(cfg, workdir, done):
  cfg.dpo.init.policy_artifact = done["sft"]["artifact_id"]
  return dpo_train.train_dpo(cfg.dpo, workdir / "dpo")


def _best_of_n(cfg, workdir, done):
  cfg.best_of_n.policy = done["sft"]["artifact_id"]
  if "reward_model" in done:
    cfg.best_of_n.reward.source = f"reward_model:{done['reward_model']['artifact_id']}"
  return best_of_n_run.run_best_of_n(cfg.best_of_n, workdir / "best_of_n")


def _evaluate(cfg, workdir, done):
  cfg.evaluate.reference = done["sft"]["artifact_id"]
  cfg.evaluate.policies = ",".join(done[s]["artifact_id"] for s in ("ppo", "dpo") if s in done)
  if "reward_model" in done:
    cfg.evaluate.judges.proxy = f"reward_model:{done['reward_model']['artifact_id']}"
  return suite.run_evaluation(cfg.evaluate, workdir / "evaluate")


STAGES: dict[str, Callable[[ml_collections.ConfigDict, pathlib.Path, Results], Results]] = {
    "sft": _sft, "reward_model": _reward_model, "ppo": _ppo, "dpo": _dpo, "best_of_n": _best_of_n,
    "evaluate": _evaluate,
}
REQUIRES = {"reward_model": ("sft",), "ppo": ("sft", "reward_model"), "dpo": ("sft",), "best_of_n": ("sft",),
            "evaluate": ("sft",)}


def validate_stages(stages) -> None:
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"config.stages has unknown stages {unknown}; known: {list(STAGES)}")
  for i, s in enumerate(stages):
    missing = [r for r in REQUIRES.get(s, ()) if r not in stages[:i]]
    if missing:
      raise ValueError(f"config.stages: stage {s!r} needs {missing} to run before it")


def run_pipeline(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
  """Runs `config.stages` in order and writes `<workdir>/report.md`; returns its path."""
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  stages = tuple(config.stages)
  validate_stages(stages)
  results: Results = {}
  timings: dict[str, float] = {}
  for i, stage in enumerate(stages):
    logger.info("=== stage %d/%d: %s ===", i + 1, len(stages), stage)
    t0 = time.perf_counter()
    results[stage] = STAGES[stage](config, workdir, results)
    timings[stage] = time.perf_counter() - t0
    logger.info("=== stage %s done in %.1f s ===", stage, timings[stage])
  report = workdir / "report.md"
  if jax.process_index() == 0:
    report.write_text(build_report(results, timings, workdir))
    (workdir / "pipeline_summary.json").write_text(json.dumps(_jsonable({"timings_s": timings, **results}),
                                                              indent=2))
  return report


# ---------------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, pathlib.Path):
    return str(x)
  return x


def _read_metrics(path: pathlib.Path) -> list[dict[str, float]]:
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _series(records, key) -> tuple[list[float], list[float]]:
  pts = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
  return [p[0] for p in pts], [p[1] for p in pts]


class FrontierRow(NamedTuple):
  """One policy on the gold-reward-vs-KL frontier."""
  method: str  # "sft" | "ppo" | "dpo" | "best-of-N"
  n: int  # best-of-N's N (1 for the other methods)
  kl: float  # KL to the SFT policy, nats per response (k3 estimate; best-of-N: analytic)
  gold: float  # mean gold reward of its responses
  gold_stderr: float  # standard error of that mean over prompts
  num_prompts: int  # held-out prompts it was measured on


def frontier_rows(results: Results) -> list[FrontierRow]:
  """Every policy's (KL, gold reward +- s.e.) from the evaluation stage and best-of-N."""
  rows: list[FrontierRow] = []
  ev = results.get("evaluate")
  if ev:
    kl = ev.get("kl_to_reference") or {}
    for player in ev["players"]:
      name, artifact = player["name"], player["artifact_id"]
      gold = ev["on_policy"][name].get("gold")
      if gold is None or name not in kl:
        continue
      method = next((s for s in ("ppo", "dpo") if results.get(s, {}).get("artifact_id") == artifact), "sft")
      rows.append(FrontierRow(method, 1, float(kl[name]["k3"]), float(gold["mean"]), float(gold["stderr"]),
                              int(ev["num_prompts"])))
  bon = results.get("best_of_n")
  if bon:
    for r in bon["per_n"]:
      rows.append(FrontierRow("best-of-N", int(r["n"]), float(r["kl/analytic"]), float(r["gold/best_mean"]),
                              float(r["gold/best_stderr"]), int(bon["num_prompts"])))
  return rows


def frontier_points(results: Results) -> dict[str, tuple[list[float], list[float]]]:
  """(KL to the SFT policy in nats, gold reward) per method, from the evaluation and best-of-N."""
  out: dict[str, tuple[list[float], list[float]]] = {}
  for row in frontier_rows(results):
    xs, ys = out.setdefault(row.method, ([], []))
    xs.append(row.kl)
    ys.append(row.gold)
  return out


def _frontier_table(rows: list[FrontierRow]) -> list[str]:
  """Markdown rows; each policy is compared with the SFT baseline measured on the same prompts."""
  sft_row = next((r for r in rows if r.method == "sft"), None)
  bon_base = next((r for r in rows if r.method == "best-of-N" and r.n == 1), None)
  lines = ["| method | N | KL (nats) | gold reward +- s.e. | vs its SFT baseline | prompts |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    base = bon_base if r.method == "best-of-N" else sft_row
    if base is None or base is r:
      versus = "baseline"
    else:
      diff = r.gold - base.gold
      versus = f"{diff:+.3f} ({diff / max(np.hypot(r.gold_stderr, base.gold_stderr), 1e-12):+.1f} s.e.)"
    lines.append(f"| {r.method} | {r.n} | {r.kl:.2f} | {r.gold:.3f} +- {r.gold_stderr:.3f} | {versus} | "
                 f"{r.num_prompts} |")
  lines += ["", "Best-of-N is measured on its own prompt set, so its N = 1 row (plain SFT samples) is its "
            "baseline; the s.e. of a difference treats the two means as independent.", ""]
  return lines


def _plot_frontier(rows: list[FrontierRow], path: pathlib.Path) -> pathlib.Path:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6.0, 4.2))
  ax = fig.add_subplot(1, 1, 1)
  for method in dict.fromkeys(r.method for r in rows):
    mine = [r for r in rows if r.method == method]
    ax.errorbar([r.kl for r in mine], [r.gold for r in mine], yerr=[r.gold_stderr for r in mine], marker="o",
                linestyle="-" if len(mine) > 1 else "none", label=method, markersize=7, capsize=3)
  ax.set_xlabel("KL to the SFT policy (nats per response)")
  ax.set_ylabel("gold reward (mean +- s.e.)")
  ax.set_title("gold reward vs KL")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def build_report(results: Results, timings: Mapping[str, float], workdir: pathlib.Path) -> str:
  """Markdown with the figures that matter: frontier, over-optimisation, calibration, curves."""
  figures = workdir / "figures"
  figures.mkdir(exist_ok=True)
  lines = ["# rlhf_jax main job report", "",
           "Every number below is measured on the lab's held-out prompts against its GOLD reward (the truth",
           "the proxy reward model was trained to imitate). KL is to the SFT policy, in nats per response.", ""]
  lines += ["| stage | seconds |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in timings.items()] + [""]

  rows = frontier_rows(results)
  if rows:
    _plot_frontier(rows, figures / "frontier.png")
    lines += ["## Gold reward vs KL", "", "![frontier](figures/frontier.png)", ""] + _frontier_table(rows)

  bon = results.get("best_of_n")
  ppo_metrics = _read_metrics(workdir / "ppo" / "metrics.jsonl")
  over = {}
  if bon:
    rows = bon["per_n"]
    kl = [r["kl/analytic"] for r in rows]
    over["best-of-N proxy (gain, std)"] = (kl, [r["proxy/gain_std"] for r in rows])
    over["best-of-N gold (gain, std)"] = (kl, [r["gold/gain_std"] for r in rows])
  if over:
    plots.plot_curves(over, figures / "overoptimisation.png", "KL (nats)", "reward gain over N=1 (base std)",
                      title="proxy vs gold reward (best-of-N)")
    lines += ["## Proxy vs gold reward (over-optimisation)", "", "![overopt](figures/overoptimisation.png)", ""]
  if ppo_metrics:
    k_x, proxy = _series(ppo_metrics, "reward/raw_score")
    _, gold = _series(ppo_metrics, "monitor/gold")
    _, kl = _series(ppo_metrics, "kl/ref")
    if proxy and gold and len(kl) == len(proxy) == len(gold):
      window = max(1, len(kl) // 8)  # per-iteration rollouts are noisy: a running mean over iterations
      smooth = lambda v: plots.moving_average(v, window)  # noqa: E731
      plots.plot_curves({"proxy (reward model)": (smooth(kl), smooth(proxy)), "gold": (smooth(kl), smooth(gold))},
                        figures / "ppo_proxy_gold.png", "KL to reference (nats)", "reward",
                        title=f"PPO: proxy and gold reward (running mean of {window} iterations)")
      lines += ["![ppo](figures/ppo_proxy_gold.png)", ""]

  rm_dir = workdir / "reward_model"
  if (rm_dir / "reliability.png").exists():
    shutil.copy(rm_dir / "reliability.png", figures / "reliability.png")
    lines += ["## Reward-model calibration", "", "![reliability](figures/reliability.png)", ""]
    rm = results.get("reward_model", {})
    test = rm.get("test", {})
    keep = {k: v for k, v in test.items() if isinstance(v, (int, float)) and any(
        s in k for s in ("accuracy", "auc", "ece", "spearman", "log_loss"))}
    if keep:
      lines += ["| held-out metric | value |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in sorted(keep.items())]
      lines.append("")

  curves = {}
  for stage, key in (("sft", "loss/nll"), ("reward_model", "loss/total"), ("dpo", "loss/total")):
    steps, values = _series(_read_metrics(workdir / stage / "metrics.jsonl"), key)
    if steps:
      curves[f"{stage} {key}"] = (steps, values)
  if curves:
    plots.plot_curves(curves, figures / "training_curves.png", "step", "loss", title="training curves")
    lines += ["## Training curves", "", "![curves](figures/training_curves.png)", ""]
  if ppo_metrics:
    s, r = _series(ppo_metrics, "reward/raw_score")
    _, k = _series(ppo_metrics, "kl/ref")
    if s:
      plots.plot_curves({"proxy score": (s, r), "KL to reference": (s, k)}, figures / "ppo_curves.png",
                        "iteration", "value", title="PPO")
      lines += ["![ppo curves](figures/ppo_curves.png)", ""]

  lines += ["## Stage summaries", ""]
  for stage, summary in results.items():
    short = {k: v for k, v in summary.items() if k not in ("examples", "per_n", "hacking", "on_policy", "plots")}
    lines += [f"### {stage}", "", "```json", json.dumps(_jsonable(short), indent=1, default=str)[:4000], "```", ""]
  return "\n".join(lines)
