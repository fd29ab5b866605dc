"""Supervised fine-tuning entry point.

  python experiments/train_sft.py --config configs/sft.py --workdir runs/sft
"""
from absl import app, flags
from ml_collections import config_flags

from rlhf_jax.algorithms import sft
from rlhf_jax.experiment import start

_CONFIG = config_flags.DEFINE_config_file("config", "configs/sft.py", "SFT config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/sft", "Directory for checkpoints, metrics and artifacts.")


def main(argv):
  del argv
  start(_CONFIG.value)
  sft.train_sft(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
