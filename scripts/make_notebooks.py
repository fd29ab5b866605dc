"""Writes the notebooks in colabs/ (nbformat v4, outputs cleared) from the cells below.

  python scripts/make_notebooks.py            # (re)write colabs/*.ipynb
  python scripts/make_notebooks.py --check    # exit 1 if a notebook differs from this script

The notebooks are generated so that they are reproducible and reviewable: edit the cells here,
never the .ipynb files. Every computation a notebook shows is a library call (mostly
`rlhf_jax.notebooks`); the cells only wire stages together and display results.

Each notebook reads $RLHF_JAX_NOTEBOOK_SCALE: "tiny" (default) trains the `tiny` model, the
documented CPU run (minutes); "test" uses each family's "test" config variant and runs in seconds
(tests/notebooks_test.py executes every notebook this way). The per-scale config overrides are
the dictionaries `OVERRIDES` below (tests validate the "tiny" ones without running them).
"""
from __future__ import annotations

import argparse
import pathlib
import json
import sys
import textwrap
from typing import Any

import nbformat

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLABS = ROOT / "colabs"
# The repository's git URL for the Colab install cell ("" = ask the user to fill it in).
REPO_URL = ""

# Per notebook, stage and scale: dotted config overrides (configs/<family>.py fields).
OVERRIDES: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "reward_model_analysis": {
        "sft": {"test": {}, "tiny": {"train.total_steps": 250, "optimizer.total_steps": 250,
                                     "eval.num_sample_prompts": 0}},
        "reward_model": {"test": {}, "tiny": {"train.total_steps": 150, "optimizer.total_steps": 150}},
    },
    "ppo_internals": {
        "sft": {"test": {}, "tiny": {"train.total_steps": 250, "optimizer.total_steps": 250,
                                     "eval.num_sample_prompts": 0}},
        "reward_model": {"test": {}, "tiny": {"train.total_steps": 150, "optimizer.total_steps": 150}},
        "ppo": {"test": {"train.total_steps": 4, "train.sample_every": 0},
                "tiny": {"train.total_steps": 40, "train.sample_every": 0}},
    },
}
# Families whose configs each notebook loads (for the tests' validation of the overrides).
FAMILIES = {"quickstart": ("main",), "reward_model_analysis": ("sft", "reward_model"),
            "ppo_internals": ("sft", "reward_model", "ppo")}


def _src(text: str) -> str:
  return textwrap.dedent(text).strip("\n")


def _overrides(notebook: str, stage: str, name: str) -> str:
  """Source of `NAME = {"test": {...}, "tiny": {...}}[SCALE]`: the stage's dotted config overrides."""
  lines = [f"{name} = {{  # dotted config fields per scale (like --config.train.total_steps=...)"]
  for scale, fields in OVERRIDES[notebook][stage].items():
    body = ", ".join(f"{json.dumps(k)}: {v!r}" for k, v in fields.items())
    lines.append(f"    {json.dumps(scale)}: {{{body}}},")
  return "\n".join(lines + ["}[SCALE]"])


def install_cell() -> str:
  return _src(f'''
      # Colab set-up: clone and install rlhf_jax when it is not importable (skipped in a checkout).
      import importlib.util
      import os
      import subprocess
      import sys

      if importlib.util.find_spec("rlhf_jax") is None:
        REPO_URL = os.environ.get("RLHF_JAX_REPO_URL", {json.dumps(REPO_URL)})  # the repository's git URL
        if not REPO_URL:
          raise RuntimeError("rlhf_jax is not installed: set REPO_URL in this cell (or $RLHF_JAX_REPO_URL) "
                             "to the repository's git URL, or run the notebook from a checkout")
        subprocess.run(["git", "clone", "--depth=1", REPO_URL, "rlhf_jax_repo"], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "rlhf_jax_repo"], check=True)
        sys.path.insert(0, os.path.abspath("rlhf_jax_repo"))
      ''')


def scale_cell(name: str) -> str:
  return _src(f'''
      from rlhf_jax.notebooks import display, environment

      # $RLHF_JAX_NOTEBOOK_SCALE: "tiny" (default; the tiny model, minutes on a CPU) or "test" (seconds).
      SCALE = environment.notebook_scale()
      WORKDIR = environment.notebook_workdir("{name}", SCALE)  # stages run in sub-directories
      REGISTRY = WORKDIR / "artifacts"  # the artifact registry the stages share
      print(f"scale {{SCALE!r}}; runs in {{WORKDIR}}")
      ''')


SCALE_NOTE = """
Runs on a CPU runtime. `RLHF_JAX_NOTEBOOK_SCALE=tiny` (the default) trains the `tiny` model (the
documented CPU run, minutes); `RLHF_JAX_NOTEBOOK_SCALE=test` uses the toy "test" configs and runs in
seconds (the test suite executes this notebook that way; its numbers mean nothing). Re-running
resumes every trainer from its checkpoints in the run directory."""


def quickstart() -> list[tuple[str, str]]:
  return [
      ("md", """
# rlhf_jax quickstart: the RLHF pipeline in small steps

RLHF = Reinforcement Learning from Human Feedback. This notebook walks through the pipeline of
`experiments/main.py` (configs/main.py) one stage at a time, on the built-in *lab*: a synthetic
review task whose true ("gold") reward is known, so every method can be judged on the truth:

1. the lab: a review and its gold reward components;
2. SFT (supervised fine-tuning) on lab demonstrations, with its loss curve;
3. sampling from the SFT policy, graded by the gold reward;
4. a Bradley-Terry reward model trained on simulated annotators' preferences;
5. best-of-N sampling selected by that reward model;
6. DPO (Direct Preference Optimization) for a few steps;
7. gold reward against KL (Kullback-Leibler divergence) to the SFT policy for both methods.

Stages pass artifacts (policies, reward models) by id through a registry in the run directory.
""" + SCALE_NOTE),
      ("code", install_cell()),
      ("code", scale_cell("quickstart")),
      ("md", """
## 1. The lab

Prompts ask for a review of a product; the gold reward scores a response on sentiment, relevance,
grammar, repetition, length and a proper ending (`rlhf_jax.lab.gold`). A learned reward model only
approximates it, which is what makes reward over-optimisation visible in the lab."""),
      ("code", _src('''
          from rlhf_jax import lab

          demo = lab.review_sft(lab.LabConfig.small(num=4), "train")[0]
          # The same review with piled-on praise: a proxy that counts positive words likes it more.
          hacked = demo["response"] + " It is great. It is great. It is great."
          gold = lab.gold_reward([demo["prompt"]] * 2, [demo["response"], hacked])
          weights = lab.GoldConfig().weights()
          print("prompt:  ", demo["prompt"])
          print("response:", demo["response"])
          display.show_table(
              [{"component": c, "weight": weights[c], "review": float(v[0]), "review + praise": float(v[1])}
               for c, v in gold.components().items()]
              + [{"component": "total (weighted sum)", "review": float(gold.total[0]),
                  "review + praise": float(gold.total[1])}])
          ''')),
      ("md", """
## 2. Supervised fine-tuning

`configs/main.py` holds one section per stage (each the family's own config, trimmed for the main
job). `train_sft` trains a tokenizer and the policy on lab demonstrations, evaluates the held-out
loss, samples a few responses and registers the final policy as an artifact."""),
      ("code", _src('''
          from rlhf_jax.algorithms import metrics as metrics_lib
          from rlhf_jax.algorithms import sft
          from rlhf_jax.evaluation import plots
          from rlhf_jax.notebooks import figures

          MAIN = environment.load_config("main", SCALE)  # configs/main.py: one section per stage
          sft_summary = sft.train_sft(MAIN.sft, WORKDIR / "sft")
          SFT_POLICY = sft_summary["artifact_id"]
          print("SFT policy artifact:", SFT_POLICY)

          sft_records = metrics_lib.read_jsonl(WORKDIR / "sft" / "metrics.jsonl")
          display.show_images(plots.plot_curves(
              {"train NLL": figures.metric_series(sft_records, "loss/nll"),
               "held-out NLL": figures.metric_series(sft_records, "eval/loss")},
              WORKDIR / "sft_loss.png", "step", "nats per response token", title="SFT loss"))
          ''')),
      ("md", """
## 3. Sample from the policy and score with gold

The policy is loaded from the registry by its id, as every later stage does."""),
      ("code", _src('''
          import jax

          from rlhf_jax.algorithms import policy_loading

          policy = policy_loading.load_policy(REGISTRY, SFT_POLICY)
          prompts = [r["prompt"] for r in lab.review_prompts(sft.lab_config(MAIN.sft.lab), "eval")][:8]
          graded = sft.sample_and_grade(policy.params, policy.model, policy.tokenizer, prompts, jax.random.key(0),
                                        max_new_tokens=MAIN.sft.eval.max_new_tokens)
          display.show_table(graded["examples"])
          samples = graded["examples"]
          components = lab.gold_reward([e["prompt"] for e in samples], [e["response"] for e in samples])
          display.show_table(display.dict_rows({**graded, **components.metrics("gold")},
                                               ["gold/total", *[f"gold/{c}" for c in lab.COMPONENTS],
                                                "gold/grammatical_rate", "sample/eos_rate", "sample/length"]))
          ''')),
      ("md", """
## 4. A reward model

A Bradley-Terry reward model, its trunk started from the SFT policy, trained on pairs labelled by
a simulated annotator panel (some careful, some hasty, one clicking at random). The held-out test
report compares it with the annotators' labels and with gold, before and after calibration."""),
      ("code", _src('''
          from rlhf_jax.algorithms import reward_model_train

          rm_config = MAIN.reward_model
          rm_config.init.policy_artifact = SFT_POLICY
          rm_summary = reward_model_train.train_reward_model(rm_config, WORKDIR / "reward_model")
          REWARD_MODEL = rm_summary["artifact_id"]
          print("reward model artifact:", REWARD_MODEL, "stopped:", rm_summary["stop_reason"])
          display.show_table(display.dict_rows(rm_summary["test"], [
              "accuracy", "auc", "ece", "calibrated/isotonic/ece", "gold/accuracy", "gold/spearman"]))
          display.show_images(WORKDIR / "reward_model" / "reliability.png", width=360)
          ''')),
      ("md", """
## 5. Best-of-N with the reward model

Sample N responses per held-out prompt from the SFT policy and keep the one the reward model
scores highest. Its KL to the policy is known exactly: log N - (N - 1) / N nats."""),
      ("code", _src('''
          from rlhf_jax.algorithms import best_of_n_run

          bon_config = MAIN.best_of_n
          bon_config.policy = SFT_POLICY
          bon_config.reward.source = f"reward_model:{REWARD_MODEL}"
          best_of_n = best_of_n_run.run_best_of_n(bon_config, WORKDIR / "best_of_n")
          display.show_table(best_of_n["per_n"], ["n", "kl/analytic", "proxy/best_mean", "gold/best_mean",
                                                  "proxy/gain_std", "gold/gain_std"])
          display.show_images(WORKDIR / "best_of_n" / "gain_vs_kl.png")
          ''')),
      ("md", """
## 6. DPO for a few steps

DPO trains the policy directly on the same kind of preference pairs, against a frozen copy of the
SFT policy (the reference). Evaluation samples held-out prompts for the gold reward and the KL to
the reference."""),
      ("code", _src('''
          from rlhf_jax.algorithms import dpo_train

          dpo_config = MAIN.dpo
          dpo_config.init.policy_artifact = SFT_POLICY
          dpo = dpo_train.train_dpo(dpo_config, WORKDIR / "dpo")
          keys = ["eval/kl/full", "eval/gold/total", "eval/pref/rewards/accuracy", "eval/sample/length"]
          display.show_table([{"policy": "start (the SFT reference)", **{k: dpo["initial"][k] for k in keys}},
                              {"policy": "after DPO", **{k: dpo["final"][k] for k in keys}}])
          dpo_records = metrics_lib.read_jsonl(WORKDIR / "dpo" / "metrics.jsonl")
          display.show_images(plots.plot_curves({"DPO loss": figures.metric_series(dpo_records, "loss/total")},
                                                WORKDIR / "dpo_loss.png", "step", "loss", title="DPO"))
          ''')),
      ("md", """
## 7. Gold reward against KL

The price of every method is its KL to the SFT policy: best-of-N moves along its curve as N
grows, DPO along its training. In the lab the gold reward, not the proxy, is the y-axis."""),
      ("code", _src('''
          series = figures.gold_vs_kl_series(best_of_n_rows=best_of_n["per_n"], dpo_summary=dpo,
                                             dpo_records=dpo_records)
          display.show_images(plots.plot_curves(series, WORKDIR / "gold_vs_kl.png",
                                                "KL to the SFT policy (nats per response)", "gold reward",
                                                title="gold reward vs KL"))
          ''')),
      ("md", """
## Next

* `python experiments/main.py --workdir runs/main` runs every stage, PPO and the evaluation suite
  included, and writes a Markdown report (`rlhf_jax.pipeline.run_pipeline`).
* `colabs/reward_model_analysis.ipynb`: annotators, calibration and the reward model's errors.
* `colabs/ppo_internals.ipynb`: one PPO rollout taken apart, KL control, proxy vs gold reward."""),
  ]


def reward_model_analysis() -> list[tuple[str, str]]:
  nb = "reward_model_analysis"
  return [
      ("md", """
# Reward-model analysis: annotators, calibration, per-annotator errors

A reward model (RM) is only as good as its labels. The lab simulates an annotator panel that
labels pairs of reviews by Bradley-Terry on the gold reward, each annotator with its own noise
(temperature) and biases, so labels and models can both be measured against the truth:

1. the panel against gold: agreement, Cohen's kappa, Fleiss' kappa;
2. aggregating several labels per pair: majority vote vs Dawid-Skene;
3. a small RM (Bradley-Terry) trained on the panel's labels;
4. its calibration: reliability diagrams and the expected calibration error (ECE) before and
   after Platt scaling and isotonic regression fitted on held-out pairs;
5. a per-annotator breakdown of its errors.
""" + SCALE_NOTE),
      ("code", install_cell()),
      ("code", scale_cell(nb)),
      ("md", """
## 1. The annotator panel against gold

Every pair is labelled by three distinct panel members. Gold-tied pairs (equal gold rewards) have
no right answer and are left out of the agreement numbers."""),
      ("code", _src('''
          import dataclasses

          from rlhf_jax import lab
          from rlhf_jax.notebooks import figures, panel

          NUM_PAIRS = {"test": 300, "tiny": 2000}[SCALE]
          display.show_table([dataclasses.asdict(a) for a in lab.DEFAULT_PANEL])
          panel_config = dataclasses.replace(lab.LabConfig.small(), num_preferences_train=NUM_PAIRS,
                                             annotators_per_pair=3)
          labelled = lab.review_preferences(panel_config, "train")
          ids = [a.annotator_id for a in panel_config.panel]
          report = panel.panel_report(labelled.labels, labelled.gold_a_I, labelled.gold_b_I, ids)
          display.show_table(report.rows())
          display.show_images(figures.plot_matrix(report.kappa_RxR, ids, WORKDIR / "kappa.png",
                                                  title="pairwise Cohen's kappa"))
          ''')),
      ("md", """
## 2. Majority vote vs Dawid-Skene

Dawid-Skene (DS) learns each annotator's confusion matrix by expectation-maximisation (EM) and
weighs their votes accordingly; the majority vote counts every vote the same. With a noisier
panel (two good annotators, three random clickers) the difference grows."""),
      ("code", _src('''
          NOISY_PANEL = (lab.SimulatedAnnotator("expert", temperature=0.1),
                         lab.SimulatedAnnotator("careful", temperature=0.5),
                         *(lab.SimulatedAnnotator(f"random_{k}", kind="random") for k in (1, 2, 3)))
          rows = [{"panel": "default", **report.summary()}]
          noisy_config = dataclasses.replace(panel_config, panel=NOISY_PANEL)
          noisy = lab.review_preferences(noisy_config, "train")
          noisy_report = panel.panel_report(noisy.labels, noisy.gold_a_I, noisy.gold_b_I,
                                            [a.annotator_id for a in NOISY_PANEL])
          rows.append({"panel": "noisy", **noisy_report.summary()})
          display.show_table(rows)
          display.show_table(noisy_report.rows())
          ''')),
      ("md", """
## 3. A small reward model

SFT first (the RM's trunk starts from the SFT policy), then the RM on lab pairs labelled by one
panel member each. The trainer's own report evaluates it on held-out pairs."""),
      ("code", _src('''
          from rlhf_jax.algorithms import reward_model_train, sft

          @SFT@
          @RM@
          sft_config = environment.load_config("sft", SCALE, SFT_OVERRIDES)
          sft_summary = sft.train_sft(sft_config, WORKDIR / "sft")
          rm_config = environment.load_config("reward_model", SCALE, RM_OVERRIDES)
          rm_config.init.policy_artifact = sft_summary["artifact_id"]
          rm_summary = reward_model_train.train_reward_model(rm_config, WORKDIR / "reward_model")
          REWARD_MODEL = rm_summary["artifact_id"]
          print("reward model artifact:", REWARD_MODEL)
          display.show_table(display.dict_rows(rm_summary["test"], [
              "accuracy", "auc", "log_loss", "ece", "gold/accuracy", "gold/spearman"]))
          display.show_images(WORKDIR / "reward_model" / "reliability.png", width=360)
          ''').replace("@SFT@", _overrides(nb, "sft", "SFT_OVERRIDES"))
       .replace("@RM@", _overrides(nb, "reward_model", "RM_OVERRIDES"))),
      ("md", """
## 4. Calibration: raw, Platt, isotonic

Fresh held-out pairs, each labelled by all six panel members. Half of the pairs fit the
calibration maps (on the RM's margin r_chosen - r_rejected); the other half measures them. Under
Bradley-Terry the raw probability is sigmoid(margin)."""),
      ("code", _src('''
          from rlhf_jax.algorithms import rm_scoring
          from rlhf_jax.notebooks import rm_calibration

          NUM_EVAL_PAIRS = {"test": 200, "tiny": 600}[SCALE]
          eval_config = dataclasses.replace(panel_config, num_preferences_eval=NUM_EVAL_PAIRS,
                                            annotators_per_pair=len(panel_config.panel))
          pairs = lab.review_pairs(eval_config, "eval")  # prompts, responses a, responses b
          judged = lab.review_preferences(eval_config, "eval", pairs=pairs)
          scorer = rm_scoring.load_scorer(REWARD_MODEL, REGISTRY)
          score_a, score_b = (scorer.score(pairs[0], responses)["raw"] for responses in pairs[1:])
          oriented = rm_calibration.orient_annotations(score_a, score_b, judged.labels, judged.gold_a_I,
                                                       judged.gold_b_I)
          study = rm_calibration.calibration_study(oriented, ids, calibration_fraction=0.5)
          print(f"{study.num_calibration_rows} calibration rows, {study.num_test_rows} test rows")
          display.show_table(study.ece_rows())
          figures.plot_reliability_comparison(study.test_margin_B, study.calibrations, WORKDIR / "reliability.png")
          display.show_images(WORKDIR / "reliability.png")
          ''')),
      ("md", """
## 5. Per-annotator breakdown

The same test pairs, split by who labelled them: how often the RM agrees with each annotator's
labels, next to that annotator's own agreement with gold. Every test pair was judged by all six
annotators, so the RM's accuracy against gold is the same in every row: the differences between
rows are the annotators' noise and biases, which cap the accuracy any RM can show on their labels."""),
      ("code", _src('''
          display.show_table(study.annotator_rows())
          display.show_table(rm_calibration.metric_rows(study.report, ["gold/accuracy", "gold/spearman",
                                                                       "gold/pearson", "auc"]))
          ''')),
  ]


def ppo_internals() -> list[tuple[str, str]]:
  nb = "ppo_internals"
  return [
      ("md", """
# PPO internals: one rollout taken apart, KL control, proxy vs gold

PPO = Proximal Policy Optimization; KL = Kullback-Leibler divergence; GAE = Generalized Advantage
Estimation; SFT = supervised fine-tuning; RM = reward model. The RLHF loop has four models: the
policy (trained), a frozen reference (the SFT policy), a value model (the critic) and the reward
model. This notebook builds the same trainer `train_ppo` builds and looks inside:

1. SFT policy and RM (small);
2. one rollout before training (policy = reference, so every KL is exactly 0);
3. a short PPO run against the RM, with the gold reward monitored;
4. one rollout after it, token by token: log-probs, reference log-probs, k1 / k3 KL, the
   KL-shaped rewards, values, GAE advantages and returns;
5. the adaptive KL controller;
6. proxy (RM) and gold reward against KL.
""" + SCALE_NOTE),
      ("code", install_cell()),
      ("code", scale_cell(nb)),
      ("md", "## 1. SFT policy and reward model"),
      ("code", _src('''
          from rlhf_jax.algorithms import reward_model_train, sft

          @SFT@
          @RM@
          sft_config = environment.load_config("sft", SCALE, SFT_OVERRIDES)
          SFT_POLICY = sft.train_sft(sft_config, WORKDIR / "sft")["artifact_id"]
          rm_config = environment.load_config("reward_model", SCALE, RM_OVERRIDES)
          rm_config.init.policy_artifact = SFT_POLICY
          REWARD_MODEL = reward_model_train.train_reward_model(rm_config, WORKDIR / "reward_model")["artifact_id"]
          print("SFT policy:", SFT_POLICY, " reward model:", REWARD_MODEL)
          ''').replace("@SFT@", _overrides(nb, "sft", "SFT_OVERRIDES"))
       .replace("@RM@", _overrides(nb, "reward_model", "RM_OVERRIDES"))),
      ("md", """
## 2. The PPO trainer, and a rollout before training

`build_ppo_session` does what `train_ppo` does before its first iteration: loads the SFT policy
(trained copy and frozen reference), the RM as reward source, the critic (initialised from the RM)
and compiles the four phases of an iteration. At iteration 0 the policy IS the reference: the
per-token KL must be exactly zero."""),
      ("code", _src('''
          import jax
          import numpy as np

          from rlhf_jax.notebooks import figures, ppo_inspection

          @PPO@
          ppo_config = environment.load_config("ppo", SCALE, PPO_OVERRIDES)
          ppo_config.init.policy_artifact = SFT_POLICY
          ppo_config.reward.source = f"reward_model:{REWARD_MODEL}"
          session = ppo_inspection.build_ppo_session(ppo_config, WORKDIR / "ppo")
          before = ppo_inspection.inspect_rollout(session, session.state, jax.random.key(0))
          print("max |k1| before training:", np.abs(before.k1_BxS).max(), " beta:", before.beta)
          assert np.all(before.k1_BxS == 0.0) and np.all(before.k3_BxS == 0.0)
          display.show_table([{"prompt": p, "response": r, "RM score": s}
                              for p, r, s in zip(before.prompts[:4], before.responses, before.raw_score_B)])
          ''').replace("@PPO@", _overrides(nb, "ppo", "PPO_OVERRIDES"))),
      ("md", """
## 3. A short PPO run

Each iteration: sample, score with the RM (and, for monitoring only, the gold reward), shape the
rewards with the KL penalty, GAE, then epochs x minibatches of clipped PPO updates."""),
      ("code", _src('''
          result = ppo_inspection.run_iterations(session, ppo_config.train.total_steps)
          history = result.history
          display.show_table(history, ["step", "kl/ref", "kl/beta", "reward/raw_score", "monitor/gold",
                                       "rollout/response_length", "loss/policy"])
          ''')),
      ("md", """
## 4. One rollout after training, token by token

For each response token t: the policy's and the reference's log-probs, the KL estimates
k1 = log pi - log pi_ref (unbiased, can be negative) and k3 = exp(-k1) - 1 + k1 (unbiased and
non-negative), the reward r_t = -beta * kl_t plus the RM score at the last token, the critic's
values, and the GAE advantages and returns (the critic's targets) the update trains on. A response
that used up its token budget without emitting EOS (end of sequence) gets a fixed penalty (-1)
instead of its RM score."""),
      ("code", _src('''
          after = ppo_inspection.inspect_rollout(session, result.state, jax.random.key(1))
          mask = after.mask_BxS.astype(bool)
          assert np.all(after.k3_BxS[mask] >= 0.0)  # k3 never goes negative
          # GAE's returns are the advantages plus the values they were computed from.
          np.testing.assert_allclose(after.returns_BxS[mask], (after.advantages_BxS + after.values_BxS)[mask],
                                     atol=1e-5)
          print("prompt:  ", after.prompts[0])
          print("response:", after.responses[0])
          display.show_table(after.token_rows(0))
          display.show_images(figures.plot_rollout_tokens(after, [0, 1, 2], WORKDIR / "rollout_tokens.png"))
          ''')),
      ("md", """
## 5. The adaptive KL controller

Ziegler et al. (2019): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon), with
n responses per iteration. Over a short run beta barely moves (the horizon is 10,000 responses);
replaying the controller over a long synthetic KL trace shows the proportional control: KL above
the target raises beta, below lowers it."""),
      ("code", _src('''
          from rlhf_jax.evaluation import plots

          steps, betas = figures.metric_series(history, "kl/beta")
          rows_per_iteration = session.trainer.settings.rows
          replay = ppo_inspection.kl_controller_trajectory(
              [h["kl/ref"] for h in history], init_beta=ppo_config.kl.init_beta, target=ppo_config.kl.target,
              horizon=ppo_config.kl.horizon, max_error=ppo_config.kl.max_error, batch_size=rows_per_iteration)
          np.testing.assert_allclose(replay[:-1], betas, rtol=1e-5)  # the run's betas, replayed
          target = ppo_config.kl.target
          trace = np.concatenate([np.full(300, 2.0 * target), np.full(300, 0.5 * target)])
          synthetic = ppo_inspection.kl_controller_trajectory(
              trace, init_beta=ppo_config.kl.init_beta, target=target, horizon=ppo_config.kl.horizon,
              max_error=ppo_config.kl.max_error, batch_size=64)
          display.show_images(
              plots.plot_curves({"beta during the run": (steps, betas)}, WORKDIR / "beta_run.png",
                                "iteration", "beta", title="KL coefficient in the PPO run"),
              plots.plot_curves({"beta (KL = 2 x target, then 0.5 x target)": synthetic},
                                WORKDIR / "beta_synthetic.png", "update (64 responses each)", "beta",
                                title="adaptive controller on a synthetic KL trace"))
          ''')),
      ("md", """
## 6. Proxy and gold reward against KL

The RM is a proxy. As the policy moves away from the reference (KL grows) the proxy score rises;
the gold reward rises with it at first and, with a weak RM and a small KL penalty, eventually
falls (reward over-optimisation; `scripts/lab_ppo_overoptimisation.py` runs the long version)."""),
      ("code", _src('''
          kl, proxy = figures.metric_series(history, "reward/raw_score", "kl/ref")
          _, gold = figures.metric_series(history, "monitor/gold", "kl/ref")
          display.show_images(plots.plot_curves({"proxy (reward model)": (kl, proxy), "gold": (kl, gold)},
                                                WORKDIR / "proxy_gold_vs_kl.png", "KL to the reference (nats)",
                                                "mean reward", title="PPO: proxy and gold reward"))
          ''')),
  ]


NOTEBOOKS = {"quickstart": quickstart, "reward_model_analysis": reward_model_analysis,
             "ppo_internals": ppo_internals}


def build_notebook(name: str) -> nbformat.NotebookNode:
  """The notebook `name` with deterministic cell ids and no outputs."""
  nb = nbformat.v4.new_notebook()
  nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                 "language_info": {"name": "python"}, "colab": {"provenance": []}}
  for i, (kind, source) in enumerate(NOTEBOOKS[name]()):
    source = _src(source)
    cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
    cell.id = f"{name}-{i:02d}"
    nb.cells.append(cell)
  nbformat.validate(nb)
  return nb


def render(name: str) -> str:
  """The .ipynb text of notebook `name` (what is written to colabs/)."""
  return nbformat.writes(build_notebook(name)) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a notebook is stale")
  args = parser.parse_args(argv)
  stale = []
  for name in NOTEBOOKS:
    path = COLABS / f"{name}.ipynb"
    text = render(name)
    if path.exists() and path.read_text() == text:
      continue
    stale.append(path)
    if not args.check:
      COLABS.mkdir(exist_ok=True)
      path.write_text(text)
      print(f"wrote {path.relative_to(ROOT)}")
  if args.check and stale:
    print("stale notebooks (run python scripts/make_notebooks.py): " + ", ".join(str(p) for p in stale))
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
