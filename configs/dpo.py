"""DPO-family training (DPO = Direct Preference Optimization) on the lab's annotator preferences.

  python experiments/train_dpo.py --config configs/dpo.py --workdir runs/dpo \
      --config.init.policy_artifact=sft_policy@<12 hex>          # the artifact id train_sft printed
  python experiments/train_dpo.py --config configs/dpo.py:test --workdir /tmp/dpo   # seconds
  ... --config.algo.beta=0.05 --config.algo.loss=ipo --config.reference.mode=precomputed

Variants: "" (default: from the SFT policy artifact, `tiny` model, minutes on a 2-core CPU) and
"test" (a few steps of a toy model from random init).
"""
import ml_collections

from rlhf_jax.algorithms.optimizer import optimizer_config_defaults
from rlhf_jax.config import checkpoint_section, lab_section, mesh_section, model_section, pods, tokenizer_section

TRAINER = "rlhf_jax.algorithms.dpo_train:train_dpo"  # run(config, workdir) -> summary
VARIANTS = ("", "test") + pods.POD_VARIANTS
REQUIRES = {"init.policy_artifact": "sft"}  # filled with the SFT artifact id by the pipeline and tests


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  test = variant == "test"
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/dpo.py variant {variant!r}; use one of {VARIANTS}")
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds random init, data order and every per-step PRNG stream
  config.registry_dir = ""  # artifact registry; "" = <workdir>/../artifacts (shared by sibling stages)

  config.init = ml_collections.ConfigDict()
  # The registered SFT policy artifact (id such as "sft_policy@1a2b3c4d5e6f", or the path of its record
  # JSON) that initialises BOTH the policy and the frozen reference; its model config and tokenizer are
  # used and the `model` / `tokenizer` sections below are ignored (except model.compute_dtype/remat).
  config.init.policy_artifact = ""
  # Without an SFT artifact, start policy and reference from the same random init (tests, smoke runs).
  config.init.allow_random_init = test

  # Decoder hyper-parameters for random init; vocab_size -1 takes the (lab-trained) tokenizer's size.
  config.model = model_section("test" if test else "tiny", vocab_size=-1)
  config.mesh = mesh_section()
  config.tokenizer = tokenizer_section()  # only for random init (an SFT artifact brings its tokenizer)
  if test:
    config.tokenizer.vocab_size = 384

  config.data = ml_collections.ConfigDict()
  config.data.source = "lab"  # "lab": the built-in review preferences (rlhf_jax.lab)
  config.data.labels = "annotators"  # "annotators": the simulated panel's noisy labels | "gold": noise-free
  config.data.max_len = 128 if not test else 96  # tokens of prompt + the longer response; longer pairs are cut
  config.data.bucket_multiple = 32 if not test else 0  # padded lengths 32, 64, ...; 0 = always pad to max_len
  config.data.tie_weight = 0.0  # weight of pairs the annotator called a tie (no direction: dropped by default)
  config.lab = lab_section("test" if test else "default")

  config.batch = ml_collections.ConfigDict()
  config.batch.global_batch_size = 16 if not test else 8  # preference pairs per optimiser step (all hosts)
  config.batch.micro_batch_size = 0  # pairs per forward/backward pass; 0 = no gradient accumulation

  config.algo = ml_collections.ConfigDict()
  config.algo.loss = "dpo"  # dpo | cdpo | robust_dpo | ipo | hinge | simpo | orpo (losses.get_preference_loss)
  config.algo.beta = 0.1  # KL strength beta (IPO: tau; SimPO: reward scale); not used by orpo
  config.algo.label_smoothing = 0.1  # cdpo only: probability that a label is flipped
  config.algo.label_noise = 0.1  # robust_dpo only: assumed label-flip rate
  config.algo.gamma = 0.5  # simpo only: target reward margin
  config.algo.lam = 0.1  # orpo only: weight of the odds-ratio term
  config.algo.logprob_chunk_size = 0  # > 0: vocabulary-chunked log-probs (never materialise [2B, L, V])

  config.reference = ml_collections.ConfigDict()
  # "in_step": the frozen reference runs inside every step; "precomputed": its log-probs are computed once
  # over the dataset, stored with the dataset id, and the reference leaves memory during training.
  config.reference.mode = "in_step"
  config.reference.cache_dir = ""  # where precomputed log-probs live; "" = <workdir>/reference_logprobs
  config.reference.batch_size = 0  # pairs per precompute forward pass; 0 = batch.global_batch_size

  config.optimizer = optimizer_config_defaults()
  # Peak learning rate: a tenth of the tiny model's SFT rate (1e-4 moved the lab SFT policy by 1-3 nats of
  # KL in 100 steps of 8 pairs, see scripts/lab_dpo_sweep.py); large models use far less (~5e-7).
  config.optimizer.lr = 1e-4 if not test else 1e-3
  config.optimizer.warmup_steps = 10 if not test else 0
  config.optimizer.total_steps = 200 if not test else 4  # decay horizon (keep equal to train.total_steps)
  config.optimizer.decay = "linear"
  config.optimizer.end_lr_ratio = 0.0
  config.optimizer.weight_decay = 0.0  # the reference already anchors the policy
  config.optimizer.grad_clip_norm = 10.0

  config.train = ml_collections.ConfigDict()
  config.train.total_steps = 200 if not test else 4  # optimiser steps
  config.train.log_every = 25  # metrics line in the log every N steps (JSONL/TensorBoard get all)
  config.train.eval_every = 50 if not test else 2  # held-out evaluation every this many steps

  config.checkpoint = checkpoint_section()
  config.checkpoint.every = 50 if not test else 2
  config.checkpoint.keep_best_metric = ""  # e.g. "eval/gold/total" with best_mode "max"

  config.eval = ml_collections.ConfigDict()
  config.eval.num_pairs = 256 if not test else 8  # held-out preference pairs: loss, accuracy, margins
  config.eval.num_prompts = 128 if not test else 4  # held-out prompts sampled for gold reward and KL (0 = off)
  config.eval.prompt_batch_size = 64 if not test else 4  # prompts per compiled sampling call
  config.eval.max_new_tokens = 64 if not test else 8  # response budget of those samples
  config.eval.at_start = True  # also evaluate before the first step (the reference's own numbers)
  if variant in pods.POD_VARIANTS:
    return pods.apply_pod(config, variant)
  return config
