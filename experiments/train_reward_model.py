"""Reward-model training entry point.

  python experiments/train_reward_model.py --config configs/reward_model.py --workdir runs/rm
  python experiments/train_reward_model.py --config configs/reward_model.py:test --workdir /tmp/rm
"""
import json

from absl import app, flags
from ml_collections import config_flags

from rlhf_jax.algorithms import reward_model_train
from rlhf_jax.experiment import start

_CONFIG = config_flags.DEFINE_config_file("config", "configs/reward_model.py", "Reward-model config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/reward_model", "Directory for checkpoints, metrics, reports.")


def main(argv):
  del argv
  start(_CONFIG.value)
  summary = reward_model_train.train_reward_model(_CONFIG.value, _WORKDIR.value)
  print(json.dumps({k: summary[k] for k in ("artifact_id", "best_step", "stop_reason", "test")}, indent=2))


if __name__ == "__main__":
  app.run(main)
