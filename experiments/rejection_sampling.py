"""Iterated rejection-sampling fine-tuning entry point (best-of-N -> select -> SFT, k rounds).

  python experiments/rejection_sampling.py --config configs/rejection_sampling.py \
      --workdir runs/rejection_sampling --config.policy=sft_policy@<12 hex>
"""
from absl import app, flags
from ml_collections import config_flags

from rlhf_jax.algorithms import rejection_sampling_loop
from rlhf_jax.experiment import start

_CONFIG = config_flags.DEFINE_config_file("config", "configs/rejection_sampling.py",
                                          "Rejection-sampling config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/rejection_sampling", "Directory for the rounds' data, runs and plots.")


def main(argv):
  del argv
  start(_CONFIG.value)
  rejection_sampling_loop.run_rejection_sampling(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
