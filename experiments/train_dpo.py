"""DPO-family training entry point (DPO = Direct Preference Optimization).

  python experiments/train_dpo.py --config configs/dpo.py --workdir runs/dpo \
      --config.init.policy_artifact=sft_policy@<12 hex>
"""
from absl import app, flags
from ml_collections import config_flags

from rlhf_jax.algorithms import dpo_train
from rlhf_jax.experiment import start

_CONFIG = config_flags.DEFINE_config_file("config", "configs/dpo.py", "DPO config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/dpo", "Directory for checkpoints, metrics and artifacts.")


def main(argv):
  del argv
  start(_CONFIG.value)
  dpo_train.train_dpo(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
