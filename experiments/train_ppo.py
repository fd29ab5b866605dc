"""PPO / GRPO / RLOO entry point (PPO = Proximal Policy Optimization, GRPO = Group Relative Policy
Optimization, RLOO = REINFORCE Leave-One-Out).

  python experiments/train_ppo.py --config configs/ppo.py --workdir runs/ppo \
      --config.init.policy_artifact=sft_policy@<12 hex>
  python experiments/train_ppo.py --config configs/grpo.py --workdir runs/grpo \
      --config.init.policy_artifact=sft_policy@<12 hex>
"""
from absl import app, flags
from ml_collections import config_flags

from rlhf_jax.algorithms.ppo import run
from rlhf_jax.experiment import start

_CONFIG = config_flags.DEFINE_config_file("config", "configs/ppo.py", "PPO or GRPO config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/ppo", "Directory for checkpoints, metrics, samples and artifacts.")


def main(argv):
  del argv
  start(_CONFIG.value)
  run.validate_and_derive(_CONFIG.value)  # fail before anything is written
  run.train_ppo(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
