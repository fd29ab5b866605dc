"""Reward-model (RM) training: Bradley-Terry on preference pairs, held-out evaluation, early
stopping, calibration and normalisation, optionally as an ensemble.

  python experiments/train_reward_model.py --config configs/reward_model.py --workdir runs/rm
  python experiments/train_reward_model.py --config configs/reward_model.py:test --workdir /tmp/rm
  ... --config.init.policy_artifact=sft_policy@<12 hex>        # start the trunk from the SFT policy
  ... --config.ensemble.size=4 --config.ensemble.bootstrap=True
  ... --config.data.annotators_per_pair=3 --config.data.aggregation=dawid_skene

Variants: "" (default: lab preferences, `tiny` model, minutes on a 2-core CPU), "test" (a few
steps of a toy model), "pod_v4_32" / "pod_v5e_256" (TPU pod layouts, rlhf_jax.config.pods).
"""
import ml_collections

from rlhf_jax.algorithms.optimizer import optimizer_config_defaults
from rlhf_jax.config import checkpoint_section, lab_section, mesh_section, model_section, pods, tokenizer_section

TRAINER = "rlhf_jax.algorithms.reward_model_train:train_reward_model"  # run(config, workdir)
VARIANTS = ("", "test") + pods.POD_VARIANTS


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/reward_model.py variant {variant!r}; use one of {VARIANTS}")
  test = variant == "test"
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds parameter init (member m: fold_in(seed, m)), data order, step keys
  config.registry_dir = ""  # artifact registry; "" = <workdir>/../artifacts (shared by sibling stages)
  config.name = "reward_model"  # artifact name (the id is "<name>@<12 hex of the content hash>")

  config.init = ml_collections.ConfigDict()
  # A registered SFT policy artifact (id like "sft_policy@1a2b3c4d5e6f", or its record JSON path):
  # the RM's decoder trunk starts from it and its model config and tokenizer are used (the `model`
  # and `tokenizer` sections are then ignored except model.compute_dtype / remat). "" = random init.
  config.init.policy_artifact = ""

  # Decoder hyper-parameters for random init; vocab_size -1 takes the (lab-trained) tokenizer's size.
  config.model = model_section("test" if test else "tiny", vocab_size=-1)
  config.mesh = mesh_section()
  config.tokenizer = tokenizer_section()  # only for random init (an SFT artifact brings its tokenizer)
  if test:
    config.tokenizer.vocab_size = 384

  config.data = ml_collections.ConfigDict()
  config.data.source = "lab"  # "lab": simulated annotators on lab reviews | "hh_rlhf": Anthropic HH files
  config.data.labels = "annotators"  # lab: "annotators" (the noisy panel) | "gold" (noise-free labels)
  config.data.annotators_per_pair = 1  # lab: distinct panel members labelling each pair (1..6)
  # How several labels of one pair become one training pair: "none" (every label is a pair),
  # "majority" (majority vote, confidence = vote share) or "dawid_skene" (Dawid-Skene EM posterior).
  config.data.aggregation = "none"
  # hh_rlhf: comma-separated HH-RLHF files (JSONL, optionally gzipped).
  config.data.paths = "../shared/data/hh-rlhf/helpful-base/test.jsonl.gz"
  config.data.max_pairs = 0  # hh_rlhf: use at most this many pairs (0 = all)
  config.data.heldout_fraction = 0.3  # hh_rlhf: share of prompts held out (validation/calibration/test)
  config.data.max_len = 128 if not test else 96  # tokens of prompt + the longer response; longer pairs are cut
  config.data.bucket_multiple = 32 if not test else 0  # padded lengths 32, 64, ...; 0 = always max_len
  config.lab = lab_section("test" if test else "default")

  config.batch = ml_collections.ConfigDict()
  config.batch.global_batch_size = 16 if not test else 8  # preference pairs per optimiser step (all hosts)
  config.batch.micro_batch_size = 0  # pairs per forward/backward pass; 0 = no gradient accumulation

  config.loss = ml_collections.ConfigDict()
  config.loss.label_smoothing = 0.0  # eps in [0, 0.5]: assumed probability that a label is flipped
  config.loss.center_coef = 0.01  # reward-centering coefficient on mean (r_c + r_r)^2 (0 = off)
  config.loss.use_margin = False  # subtract each pair's data margin from r_c - r_r (Llama 2)
  config.loss.use_weights = True  # weight pairs by their data `weight` (weighted mean)
  config.loss.use_confidence = True  # also multiply weights by the label confidence (aggregation)
  config.loss.use_ties = True  # tie pairs pull r_c and r_r together (else they count as decided)

  config.ensemble = ml_collections.ConfigDict()
  config.ensemble.size = 1  # K members trained in one vmapped step (1 = a single model)
  config.ensemble.bootstrap = False  # member m sees a bootstrap resample of each batch (else the same batch)

  config.optimizer = optimizer_config_defaults()
  config.optimizer.lr = 3e-4 if not test else 1e-3
  config.optimizer.warmup_steps = 20 if not test else 0
  config.optimizer.total_steps = 500 if not test else 4  # decay horizon (keep equal to train.total_steps)
  config.optimizer.weight_decay = 0.01

  config.train = ml_collections.ConfigDict()
  config.train.total_steps = 500 if not test else 4  # optimiser steps (early stopping may end sooner)
  config.train.log_every = 25  # metrics line in the log every N steps (JSONL/TensorBoard get all)
  config.train.eval_every = 50 if not test else 2  # held-out validation (and a checkpoint) every N steps
  # A validation metric ("" = no early stopping). The pairwise ROC-AUC uses the margins, so it is
  # less noisy than the accuracy on a few hundred pairs.
  config.train.early_stopping_metric = "eval/auc"
  config.train.early_stopping_mode = "max"  # "max" | "min": which direction is better
  config.train.early_stopping_patience = 4  # stop after this many evaluations without improvement
  config.train.early_stopping_min_delta = 0.0  # improvements smaller than this do not count

  config.checkpoint = checkpoint_section()
  config.checkpoint.every = 50 if not test else 2  # also saved at every evaluation and at the end
  config.checkpoint.keep_best_metric = "eval/auc"  # the best checkpoint is kept and exported
  config.checkpoint.best_mode = "max"

  config.eval = ml_collections.ConfigDict()
  config.eval.num_bins = 10  # uniform bins of the expected calibration error and reliability diagram
  config.eval.calibration = "isotonic"  # map stored with the model: "platt" | "isotonic" | "" (none)
  config.eval.num_reference_samples = 512 if not test else 16  # reference-policy samples for normalisation
  config.eval.score_batch_sizes = (1, 8, 32) if not test else (1, 8)  # scorer batch buckets

  if variant in pods.POD_VARIANTS:
    return pods.apply_pod(config, variant)
  return config
