"""The main job: every stage of the pipeline on the built-in lab data, one config per stage.

  python experiments/main.py --workdir runs/main
  python experiments/main.py --config configs/main.py:test --workdir /tmp/main    # seconds
  ... --config.sft.train.total_steps=200
"""
import ml_collections

from rlhf_jax.config import load_sibling


TRAINER = None  # not a single training family (see rlhf_jax/config/__init__.py)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in ("", "test"):
    raise ValueError(f"unknown configs/main.py variant {variant!r}; use '' or 'test'")
  config = ml_collections.ConfigDict()
  config.stages = ("sft",)  # stages to run, in order
  config.sft = load_sibling(__file__, "sft").get_config(variant)  # supervised fine-tuning on lab demonstrations
  return config
