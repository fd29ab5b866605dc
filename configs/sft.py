"""Supervised fine-tuning (SFT) on the built-in lab corpus.

  python experiments/train_sft.py --config configs/sft.py --workdir runs/sft
  python experiments/train_sft.py --config configs/sft.py:test --workdir /tmp/sft   # seconds, for tests
  ... --config.optimizer.lr=1e-3 --config.train.total_steps=500                        # overrides

Variants: "" (default: `tiny` model, minutes on a 2-core CPU), "test" (a few steps of a toy model),
"pod_v4_32" / "pod_v5e_256" (TPU pod layouts, rlhf_jax.config.pods; see docs/TPU.md).
"""
import ml_collections

from rlhf_jax.algorithms.optimizer import optimizer_config_defaults
from rlhf_jax.config import checkpoint_section, lab_section, mesh_section, model_section, pods, tokenizer_section

TRAINER = "rlhf_jax.algorithms.sft:train_sft"  # run(config, workdir); see rlhf_jax/config/__init__.py
VARIANTS = ("", "test") + pods.POD_VARIANTS


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  test = variant == "test"
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/sft.py variant {variant!r}; use one of {VARIANTS}")
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds parameter init, data order and every per-step PRNG stream
  config.registry_dir = ""  # artifact registry; "" = <workdir>/../artifacts (shared by sibling stages)

  # Decoder hyper-parameters; vocab_size -1 takes the (lab-trained) tokenizer's size.
  config.model = model_section("test" if test else "tiny", vocab_size=-1)
  config.mesh = mesh_section()
  config.tokenizer = tokenizer_section()
  if test:
    config.tokenizer.vocab_size = 384

  config.data = ml_collections.ConfigDict()
  config.data.source = "lab"  # "lab": the built-in synthetic review corpus (rlhf_jax.lab)
  config.data.seq_len = 128 if not test else 64  # tokens per training row
  config.data.pack = True  # pack several examples per row (segment-aware attention and positions)
  config.lab = lab_section("test" if test else "default")

  config.batch = ml_collections.ConfigDict()
  config.batch.global_batch_size = 16 if not test else 8  # rows per optimiser step (all hosts)
  config.batch.micro_batch_size = 0  # rows per forward/backward pass; 0 = no gradient accumulation

  config.optimizer = optimizer_config_defaults()
  config.optimizer.lr = 1e-3  # a small model on a small language learns fast
  config.optimizer.warmup_steps = 20 if not test else 1
  config.optimizer.total_steps = 400 if not test else 4  # decay horizon (keep equal to train.total_steps)
  config.optimizer.weight_decay = 0.01

  config.train = ml_collections.ConfigDict()
  config.train.total_steps = 400 if not test else 4  # optimiser steps
  config.train.log_every = 25  # metrics line in the log every N steps (JSONL/TensorBoard get all)
  config.train.eval_every = 100 if not test else 2  # held-out loss every this many steps
  config.train.eval_batches = 8 if not test else 1  # held-out batches per evaluation
  config.train.logprob_chunk_size = 0  # > 0: vocabulary-chunked log-probs (never materialise [B, L, V])

  config.checkpoint = checkpoint_section()
  config.checkpoint.every = 100 if not test else 2
  config.checkpoint.keep_best_metric = "eval/loss"
  config.checkpoint.best_mode = "min"

  config.init = ml_collections.ConfigDict()
  config.init.params_artifact = ""  # start from a registered policy artifact id instead of random init

  config.eval = ml_collections.ConfigDict()
  config.eval.num_sample_prompts = 64 if not test else 4  # held-out prompts sampled at the end (0 = off)
  config.eval.max_new_tokens = 48 if not test else 8  # response budget of those samples
  if variant in pods.POD_VARIANTS:
    return pods.apply_pod(config, variant)
  return config
