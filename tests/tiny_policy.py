"""Tiny SFT policies for the tests of best-of-N, rejection sampling and the evaluation suite.

`train_tiny_policy` runs `train_sft` on the "test" config once per pytest session and name (the
run lives under the session's base temp folder, so test modules share it) and returns
(registry_dir, artifact_id). Not a test module itself.
"""
import json

from rlhf_jax.algorithms import sft
from configs import sft as sft_config


def train_tiny_policy(tmp_path_factory, name: str = "a", *, steps: int = 120, seed: int = 0,
                      lr: float = 5e-3):
  root = tmp_path_factory.getbasetemp() / "tiny_policies"
  workdir = root / name
  summary = workdir / "summary.json"
  if not summary.exists():
    config = sft_config.get_config("test")
    config.seed = seed
    config.train.total_steps = config.optimizer.total_steps = steps
    config.optimizer.lr = lr
    config.train.eval_every = config.checkpoint.every = 10_000  # only at the end
    config.eval.num_sample_prompts = 0
    sft.train_sft(config, workdir)
  return root / "artifacts", json.loads(summary.read_text())["artifact_id"]
