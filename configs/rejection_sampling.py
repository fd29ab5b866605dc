"""Iterated rejection-sampling fine-tuning: best-of-N on training prompts -> keep the best -> SFT, k rounds.

  python experiments/rejection_sampling.py --config configs/rejection_sampling.py \
      --workdir runs/rejection_sampling --config.policy=sft_policy@3f2a9c01b2d4
  ... --config.rounds=3 --config.best_of_n.num_samples=16 --config.train.total_steps=100

The SFT sections (optimizer, batch, train, checkpoint, data, eval, tokenizer, model) are those of
configs/sft.py and configure every round's fine-tuning; the model and tokenizer are replaced at
run time by those of the round's starting policy artifact (`model` is kept for validation only), and
`init.params_artifact` is set to that artifact every round.

Variants: "" (default), "test" (2 rounds of a few prompts and steps), "pod_v4_32" / "pod_v5e_256".
"""
import ml_collections

from rlhf_jax.config import pods
from rlhf_jax.config.sections import load_sibling

TRAINER = "rlhf_jax.algorithms.rejection_sampling_loop:run_rejection_sampling"  # run(config, workdir)
VARIANTS = ("", "test") + pods.POD_VARIANTS
REQUIRES = {"policy": "sft"}  # fields filled with an upstream artifact id (rlhf_jax/config/__init__.py)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/rejection_sampling.py variant {variant!r}; use one of {VARIANTS}")
  test = variant == "test"
  best_of_n = load_sibling(__file__, "best_of_n")
  # The SFT sections, with SFT's own comments (configs/sft.py).
  config = load_sibling(__file__, "sft").get_config("test" if test else "")
  config.policy = ""  # artifact id of the starting policy pi_0 (kind "policy"; required at run time)
  config.rounds = 3 if not test else 2  # sample -> select -> fine-tune rounds (pi_0 -> ... -> pi_rounds)

  config.prompts = best_of_n.prompts_section(test, split="train")  # prompts sampled for the SFT data
  config.prompts.num = 512 if not test else 4
  config.prompts.batch_size = 32 if not test else 4
  config.eval_prompts = best_of_n.prompts_section(test, split="eval")  # held-out measurement + SFT eval split
  config.eval_prompts.num = 64 if not test else 4
  config.eval_prompts.batch_size = 32 if not test else 4
  config.sampling = best_of_n.sampling_section(test)

  config.best_of_n = ml_collections.ConfigDict()
  config.best_of_n.num_samples = 8 if not test else 4  # N samples per prompt each round

  config.reward = best_of_n.reward_section()  # the selection reward ("gold", "reward_model:<id>", ...)

  config.selection = ml_collections.ConfigDict()
  config.selection.mode = "best"  # "best": each prompt's best sample | "threshold": every sample >= threshold
  config.selection.threshold = ml_collections.config_dict.placeholder(float)  # reward floor (None = none)
  # Skip samples cut off at max_new_tokens (the test variant's untrained policy rarely stops, so keep them).
  config.selection.require_eos = not test

  config.train.total_steps = 100 if not test else 2  # SFT optimiser steps per round
  config.optimizer.total_steps = config.train.total_steps  # decay horizon of each round's SFT
  config.optimizer.warmup_steps = 10 if not test else 0
  config.optimizer.lr = 3e-4  # small: each round moves a trained policy a little
  config.eval.num_sample_prompts = 0  # the loop measures every policy itself (eval_prompts)
  if variant in pods.POD_VARIANTS:
    return pods.apply_pod(config, variant, batch={
        "batch.global_batch_size": lambda t: t.global_batch_size,
        "batch.micro_batch_size": lambda t: t.micro_batch_size,
        "prompts.batch_size": lambda t: t.data_parallel_size * 4,
        "prompts.num": lambda t: t.data_parallel_size * 64,
        "eval_prompts.batch_size": lambda t: t.data_parallel_size,
        "eval_prompts.num": lambda t: t.data_parallel_size * 8})
  return config
