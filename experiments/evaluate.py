"""Evaluation-suite entry point: policies vs a reference on held-out lab prompts (JSON + PNG).

  python experiments/evaluate.py --config configs/evaluate.py --workdir runs/evaluate \
      --config.reference=sft_policy@<12 hex> --config.policies=<id>,<id>
"""
from absl import app, flags
from ml_collections import config_flags

from rlhf_jax.evaluation import suite
from rlhf_jax.experiment import start

_CONFIG = config_flags.DEFINE_config_file("config", "configs/evaluate.py", "Evaluation config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/evaluate", "Directory for evaluation.json, samples and plots.")


def main(argv):
  del argv
  start(_CONFIG.value)
  suite.run_evaluation(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
