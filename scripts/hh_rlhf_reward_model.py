"""Trains a small reward model end to end on real text: the Anthropic HH-RLHF test-split files in
../shared/data/hh-rlhf (the only HH data stored locally; the train splits are not).

  python scripts/hh_rlhf_reward_model.py --workdir /tmp/hh_rm
  python scripts/hh_rlhf_reward_model.py --subsets helpful-base,harmless-base --steps 400

The pairs are split by prompt into train / validation / calibration / test (`data.heldout_fraction`
of the prompts held out), a BPE tokenizer is trained on the training transcripts, and a model of
the `test` preset shape (or `--model tiny`) is trained from random initialisation with the usual
run: held-out validation, early stopping, the best checkpoint, Platt / isotonic calibration, reward
normalisation, the exported artifact and its scoring spec. The printed JSON gives held-out
accuracy, ROC-AUC, log-loss and ECE, next to the "longer response wins" baseline on the same test
pairs (HH raters favour longer helpful answers, so this is the bar a tiny model must clear).

When the data directory is absent the script says so and exits with status 0 (it is optional).
"""
from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf_jax import models  # noqa: E402
from rlhf_jax.algorithms import reward_model_train  # noqa: E402
from rlhf_jax.config import load_sibling  # noqa: E402
from rlhf_jax.experiment import start  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/hh_rlhf_reward_model", "Run directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", str(ROOT.parent / "shared" / "data" / "hh-rlhf"),
                                "Folder with <subset>/test.jsonl.gz files.")
_SUBSETS = flags.DEFINE_list("subsets", ["helpful-base"], "HH-RLHF subsets to train on.")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 0, "Use at most this many pairs (0 = all).")
_STEPS = flags.DEFINE_integer("steps", 300, "Optimiser steps (early stopping may end sooner).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 50, "Validation interval in steps.")
_MODEL = flags.DEFINE_enum("model", "test", ["test", "tiny"], "Model preset shape.")
_MAX_LEN = flags.DEFINE_integer("max_len", 192, "Tokens of prompt + longer response (cut beyond).")
_VOCAB = flags.DEFINE_integer("vocab_size", 2048, "BPE pieces of the tokenizer trained on the fly.")
_BATCH = flags.DEFINE_integer("batch", 16, "Preference pairs per optimiser step.")
_LR = flags.DEFINE_float("lr", 1e-3, "Peak learning rate.")


def length_baseline(examples) -> float:
  """Accuracy of "the response with more words is preferred" (equal lengths count half)."""
  score = 0.0
  for e in examples:
    a, b = len(e.chosen.split()), len(e.rejected.split())
    score += 1.0 if a > b else 0.5 if a == b else 0.0
  return score / max(len(examples), 1)


def main(argv):
  del argv
  paths = [pathlib.Path(_DATA_DIR.value) / s / "test.jsonl.gz" for s in _SUBSETS.value]
  missing = [str(p) for p in paths if not p.exists()]
  if missing:
    print(f"SKIPPED: HH-RLHF files not found: {missing} (../shared/data is optional)")
    return
  config = load_sibling(str(ROOT / "configs" / "reward_model.py"), "reward_model").get_config("")
  preset = models.PRESETS[_MODEL.value]
  for field, value in preset.to_dict().items():
    if field != "vocab_size":
      config.model[field] = value
  config.model.preset = _MODEL.value
  config.data.source = "hh_rlhf"
  config.data.paths = ",".join(str(p) for p in paths)
  config.data.max_pairs = _MAX_PAIRS.value
  config.data.max_len = _MAX_LEN.value
  config.data.bucket_multiple = 64
  config.tokenizer.vocab_size = _VOCAB.value
  config.batch.global_batch_size = _BATCH.value
  config.optimizer.lr = _LR.value
  config.optimizer.warmup_steps = min(20, _STEPS.value // 10)
  config.optimizer.total_steps = config.train.total_steps = _STEPS.value
  config.train.eval_every = config.checkpoint.every = _EVAL_EVERY.value
  config.eval.calibration = "platt"
  config.eval.num_reference_samples = 256
  start(config)
  data = reward_model_train.hh_rlhf_preference_data(config)
  summary = reward_model_train.train_reward_model(config, _WORKDIR.value, data_fn=lambda _: data)
  keys = ("accuracy", "auc", "log_loss", "ece", "calibrated/platt/ece", "calibrated/platt/log_loss",
          "calibrated/isotonic/ece", "num_pairs")
  print(json.dumps({
      "artifact_id": summary["artifact_id"], "pairs": summary["pairs"],
      "best_step": summary["best_step"], "stop_reason": summary["stop_reason"],
      "first_loss": summary["first_loss"], "last_loss": summary["last_loss"],
      "validation": {k: summary["validation"].get(k) for k in keys},
      "test": {k: summary["test"].get(k) for k in keys},
      "test_longer_response_baseline": length_baseline(data.test),
  }, indent=2))


if __name__ == "__main__":
  app.run(main)
