"""Helpers behind the notebooks in colabs/ (every computation a notebook shows lives here, tested).

  environment     the notebook scale (RLHF_JAX_NOTEBOOK_SCALE = test | tiny), the repo's configs/
                  directory, family configs with dotted overrides, per-notebook work directories
  display         plain-text / Markdown tables and inline images (no pandas, no pyplot)
  figures         metric series from metrics.jsonl, gold reward vs KL, per-token rollout panels,
                  annotator-agreement heat maps, raw vs calibrated reliability diagrams (PNG, Agg)
  panel           an annotator panel against the gold labels: agreement, Cohen / Fleiss kappa,
                  majority vote vs Dawid-Skene
  rm_calibration  a reward model's margins on panel-labelled pairs: Platt / isotonic calibration
                  fitted on held-out items, expected calibration error, per-annotator breakdown
  ppo_inspection  a PPO trainer built from a config (without running it), one rollout taken apart
                  token by token (log-probs, k1/k3 KL, KL-shaped rewards, GAE), KL-controller paths

Acronyms: PPO = Proximal Policy Optimization; KL = Kullback-Leibler; GAE = Generalized Advantage
Estimation; RM = reward model.

The package imports only its light modules; import the others by name (`from rlhf_jax.notebooks
import ppo_inspection`), so a notebook pays only for what it uses.
"""
from rlhf_jax.notebooks import display, environment
from rlhf_jax.notebooks.environment import SCALES, apply_overrides, configs_dir, load_config, notebook_scale
from rlhf_jax.notebooks.environment import notebook_workdir
