"""Reward sources by name, and the lab prompts that sampling-based runs are judged on.

Best-of-N, rejection sampling and the evaluation suite take their reward from a config string:

  "gold"                      the lab's gold reward of a review (`rlhf_jax.lab.gold_reward`)
  "verifier"                  the arithmetic checker, 1 for an exactly right answer, else 0
  "reward_model:<artifact>"   a registered reward model (RM) artifact (`rm_scoring.load_scorer`);
                              scored from the sampler's token ids when the RM shares the policy's
                              tokenizer, else from the decoded texts
  "remote:<url>"              a reward service (`rlhf_jax.serving.client.RewardClient`)

Every source satisfies `reward_source.RewardSource` (a name, and `__call__(ScoringBatch)` -> [B]
float32 that raises instead of inventing a score). The lab has two tasks, "reviews" (gold reward)
and "arithmetic" (verifier); `gold_source(task)` is the ground truth of each, and `lab_prompts`
draws a task's prompts from the same seeded corpora the SFT policy was trained next to, so the
"eval" split is held out from it when the lab seeds agree.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from rlhf_jax import lab
from rlhf_jax.algorithms import reward_source
from rlhf_jax.data.schemas import PromptExample

TASKS = ("reviews", "arithmetic")
REWARD_NAME_FORMS = ("gold", "verifier", "reward_model:<artifact id>", "remote:<url>")


def _gold_total(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  return lab.gold_reward(prompts, responses).total


def gold_source(task: str) -> reward_source.TextRewardFn:
  """The ground-truth reward of a lab task: gold reward (reviews) or the verifier (arithmetic)."""
  if task == "reviews":
    return reward_source.TextRewardFn(_gold_total, name="gold")
  if task == "arithmetic":
    return reward_source.TextRewardFn(lab.verifier_reward, name="verifier")
  raise ValueError(f"unknown lab task {task!r}; choose one of {TASKS}")


def make_reward_source(name: str, *, registry_dir: Any = None, policy_tokenizer_id: Optional[str] = None,
                       remote_model: str = "rm", remote_timeout_s: float = 30.0,
                       field: str = "reward.source") -> reward_source.RewardSource:
  """A reward source from its name (module docstring).

  Args:
    name: "gold", "verifier", "reward_model:<artifact id>" or "remote:<url>".
    registry_dir: artifact registry holding reward-model artifacts.
    policy_tokenizer_id: `Tokenizer.id` of the sampled policy; an RM with the same tokenizer
      scores the sampler's token ids directly (no decode / re-encode round trip).
    remote_model: model name on the reward service.
    remote_timeout_s: per-request timeout of the reward service client.
    field: config field the name came from (for error messages).
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"{field} must be one of {REWARD_NAME_FORMS}, got {name!r}")
  if name == "gold":
    return gold_source("reviews")
  if name == "verifier":
    return gold_source("arithmetic")
  kind, _, arg = name.partition(":")
  if kind == "reward_model" and arg:
    if registry_dir is None:
      raise ValueError(f"{field}={name!r} needs an artifact registry")
    # Imported here: the RM stack (ensembles, calibration) is not needed by gold-only runs.
    from rlhf_jax.algorithms import rm_scoring  # pylint: disable=g-import-not-at-top
    scorer = rm_scoring.load_scorer(arg, registry_dir, name=name)
    if policy_tokenizer_id is not None and scorer.tokenizer.id == policy_tokenizer_id:
      return reward_source.TokenRewardFn(scorer.score_tokens, name=name)
    return reward_source.TextRewardFn(lambda p, r: scorer.score(p, r)["score"], name=name)
  if kind == "remote" and arg:
    from rlhf_jax.serving.client import RewardClient  # pylint: disable=g-import-not-at-top
    client = RewardClient(arg, model=remote_model, timeout_s=remote_timeout_s)
    return reward_source.TextRewardFn(client.as_reward_fn(), name=name)
  raise ValueError(f"{field}={name!r} is not a reward source; use one of {REWARD_NAME_FORMS}")


def score_texts(source: reward_source.RewardSource, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """Scores [B] float32 of texts through any source (text-only batch, so token-level sources raise)."""
  batch = reward_source.ScoringBatch(prompts=list(prompts), responses=list(responses))
  return reward_source.check_scores(source(batch), batch, getattr(source, "name", "reward"))


def lab_prompts(task: str, split: str, num: int, *, seed: int = 0) -> list[PromptExample]:
  """The first `num` prompts of a lab task's split (corpora are prefix-stable in their size).

  Args:
    task: "reviews" or "arithmetic".
    split: "train" or "eval" (prompt strings of "eval" never occur in "train").
    num: number of prompts (> 0); prompts are drawn with replacement, so texts may repeat
      (their ids do not).
    seed: the lab seed; equal to the policy's SFT `lab.seed` for the split to be held out.
  """
  if task not in TASKS:
    raise ValueError(f"prompts.task must be one of {TASKS}, got {task!r}")
  if num <= 0:
    raise ValueError(f"prompts.num must be positive, got {num}")
  sizes = {f.name: 0 for f in dataclasses.fields(lab.LabConfig) if f.name.startswith("num_")}
  if task == "reviews":
    sizes[f"num_prompts_{split}"] = num
    records = lab.review_prompts(lab.LabConfig(seed=seed, **sizes), split)
  else:
    sizes[f"num_arithmetic_prompts_{split}"] = num
    records = lab.arithmetic_prompts(lab.LabConfig(seed=seed, **sizes), split)
  return [PromptExample.from_dict(r) for r in records]
