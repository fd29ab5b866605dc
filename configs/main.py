"""The main job: every stage of the pipeline on the built-in lab data, one config section per stage.

  python experiments/main.py --workdir runs/main
  python experiments/main.py --config configs/main.py:test --workdir /tmp/main    # a smoke run
  ... --config.sft.train.total_steps=400 --config.ppo.train.total_steps=40

Stage sections are the families' own configs (configs/<family>.py) with sizes trimmed so the whole
pipeline fits in about ten minutes on a 2-core CPU (measured: 11 min 21 s wall on an idle 2-core
machine with a cold compilation cache; stages 141/123/139/137/109/28 s). The pipeline fills the artifact-id fields
(init.policy_artifact, reward sources, policies) itself.
"""
import ml_collections

from rlhf_jax.config import load_sibling

TRAINER = None  # a pipeline of families, not one (see rlhf_jax/config/__init__.py)
STAGES = ("sft", "reward_model", "ppo", "dpo", "best_of_n", "evaluate")


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "test"):
    raise ValueError(f"unknown configs/main.py variant {variant!r}; use '' or 'test'")
  config = ml_collections.ConfigDict()
  config.stages = STAGES  # stages to run, in order (each after the stages it needs)
  family = lambda name: load_sibling(__file__, name).get_config(variant)  # noqa: E731
  config.sft = family("sft")  # supervised fine-tuning on lab demonstrations
  config.reward_model = family("reward_model")  # Bradley-Terry reward model on simulated annotators
  config.ppo = family("ppo")  # PPO against the reward model, KL-penalised to the SFT policy
  config.dpo = family("dpo")  # DPO on the same preferences
  config.best_of_n = family("best_of_n")  # best-of-N of the SFT policy, selected by the reward model
  config.evaluate = family("evaluate")  # PPO and DPO vs SFT on held-out prompts, judged by gold
  if variant == "":
    # The ten-minute budget: shorter stages than each family's stand-alone default.
    config.sft.train.total_steps = config.sft.optimizer.total_steps = 250
    config.sft.eval.num_sample_prompts = 32
    config.reward_model.train.total_steps = config.reward_model.optimizer.total_steps = 150
    config.ppo.train.total_steps = 40
    config.dpo.train.total_steps = config.dpo.optimizer.total_steps = 100
    config.evaluate.prompts.num = 128
    config.evaluate.arithmetic.num_prompts = 0  # the main job's SFT has no arithmetic demonstrations
    config.best_of_n.prompts.num = 64
    config.best_of_n.best_of_n.num_samples = (1, 2, 4, 8, 16)
    config.best_of_n.best_of_n.num_heldout = 64
  else:
    config.evaluate.arithmetic.num_prompts = 0
  return config
