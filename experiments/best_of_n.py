"""Best-of-N entry point: reward of best-of-N against N and KL, and the samples as SFT data.

  python experiments/best_of_n.py --config configs/best_of_n.py --workdir runs/best_of_n \
      --config.policy=sft_policy@<12 hex>
"""
from absl import app, flags
from ml_collections import config_flags

from rlhf_jax.algorithms import best_of_n_run
from rlhf_jax.experiment import start

_CONFIG = config_flags.DEFINE_config_file("config", "configs/best_of_n.py", "Best-of-N config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/best_of_n", "Directory for results, plots and the exported dataset.")


def main(argv):
  del argv
  start(_CONFIG.value)
  best_of_n_run.run_best_of_n(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
