"""Rejection-sampling data: best-of-N (or above-threshold) samples as Supervised Fine-Tuning examples.

Rejection-sampling fine-tuning (RSFT; "best-of-N distillation", as in Llama 2's rejection-sampling
rounds and RAFT, Reward rAnked FineTuning, Dong et al. 2023) alternates three steps: sample N
responses per prompt from the current policy, keep the best one (or every one whose reward clears
a threshold), and fine-tune the policy on the kept responses with the SFT (Supervised
Fine-Tuning) loss. This module is the data side of the middle step:

  result = best_of_n.best_of_n(sampler, params, prompts, key, cfg, tokenizer=tok, reward=rm,
                               policy_id="policy-3f2a...")
  examples = select_for_sft(result, mode="best")          # or mode="threshold", threshold=1.5
  manifest_path = write_rejection_sampling_dataset(examples, "/data/rs_round1",
                                                   provenance={"round": 1, "prompts": "lab@ab12..."})

Every example carries its generation metadata (policy id, N, sampling settings, reward source,
score, sample index), and the dataset's manifest (`rlhf_jax.data.manifest`) records the caller's
provenance and a summary of the generation, so a fine-tuned checkpoint can be traced to the policy
and reward that made its data. The output folder has the layout of `prepare.prepare_dataset`
(`train.jsonl.gz` + `manifest.json`, reader "sft"), so SFT training reads it like any prepared set.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import pathlib
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np

from rlhf_jax.algorithms.best_of_n import BestOfNResult
from rlhf_jax.data import manifest, records
from rlhf_jax.data.schemas import SFTExample, prompt_to_json

logger = logging.getLogger(__name__)

SELECTION_MODES = ("best", "threshold")
SPLIT = "train"
DATA_FILE = f"{SPLIT}.jsonl.gz"
MANIFEST_FILE = "manifest.json"


def _candidates(result: BestOfNResult, mode: str, threshold: Optional[float]) -> list[tuple[int, int]]:
  if mode == "best":
    picked = [(b, int(i)) for b, i in enumerate(result.best_index_B)]
    if threshold is not None:  # best-of-N, but only when the best is good enough
      picked = [(b, i) for b, i in picked if result.scores_BxN[b, i] >= threshold]
    return picked
  return result.above_threshold(threshold)


def select_for_sft(result: BestOfNResult, mode: Literal["best", "threshold"] = "best",
                   threshold: Optional[float] = None, *, policy_id: Optional[str] = None,
                   require_eos: bool = True, skip_empty: bool = True,
                   source: str = "rejection_sampling") -> list[SFTExample]:
  """Turns best-of-N output into SFT examples with generation metadata.

  Args:
    result: output of `best_of_n.best_of_n`.
    mode: "best" keeps each prompt's best sample (lowest index on ties); "threshold" keeps every
      sample with score >= threshold (zero, one or several per prompt).
    threshold: required in "threshold" mode; in "best" mode an optional floor on the best score.
    policy_id: checkpoint id of the sampled policy when `result.policy_id` is unset (one of the
      two is required: data whose source policy is unknown cannot be traced).
    require_eos: skip samples cut off at max_new_tokens (the SFT template would append an EOS the
      policy never produced, teaching it to stop mid-sentence).
    skip_empty: skip samples whose text is empty or whitespace.
    source: the examples' `source` field.

  Returns:
    Examples in prompt-major order, ids "<prompt id>-s<sample index>". Skipped samples are
    counted in an INFO log line. Examples hold text: SFT re-tokenises it, which can give other
    ids than the sampled ones (the tokenizer's canonical segmentation of the same text).
  """
  if mode not in SELECTION_MODES:
    raise ValueError(f"mode must be one of {list(SELECTION_MODES)}, got {mode!r}")
  if mode == "threshold" and threshold is None:
    raise ValueError("mode='threshold' needs a threshold")
  if threshold is not None and not np.isfinite(threshold):
    raise ValueError(f"threshold must be finite, got {threshold}")
  if policy_id is not None and result.policy_id is not None and policy_id != result.policy_id:
    raise ValueError(f"policy_id {policy_id!r} contradicts result.policy_id {result.policy_id!r}")
  policy_id = policy_id if policy_id is not None else result.policy_id
  if not policy_id:
    raise ValueError("the policy checkpoint id is unknown: pass policy_id= to best_of_n or select_for_sft")
  repeated = [k for k, c in collections.Counter(result.prompt_ids).items() if c > 1]
  if repeated:
    raise ValueError(f"prompt ids repeat ({repeated[:3]}); example ids would collide. Give distinct "
                     "prompts (or PromptExamples with distinct ids) and use a larger N instead")

  cfg, n = result.sampling, result.num_samples
  picked = _candidates(result, mode, threshold)
  examples, skipped = [], collections.Counter()
  for b, i in picked:
    text = result.responses[b][i]
    if require_eos and not result.ended_with_eos_BxN[b, i]:
      skipped["no_eos"] += 1
      continue
    if skip_empty and not text.strip():
      skipped["empty"] += 1
      continue
    metadata = {
        "generator": "best_of_n", "selection": mode, "threshold": None if threshold is None else float(threshold),
        "policy_id": policy_id, "prompt_id": result.prompt_ids[b], "num_samples": n, "sample_index": i,
        "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens, "reward_source": result.reward_name,
        "score": float(result.scores_BxN[b, i]), "prompt_score_mean": float(np.mean(result.scores_BxN[b])),
        "logprob": float(result.logprobs_BxN[b, i]), "num_tokens": int(np.sum(result.mask_BxNxS[b, i])),
        "ended_with_eos": bool(result.ended_with_eos_BxN[b, i]), "key_data": list(result.key_data),
    }
    examples.append(SFTExample(prompt=result.prompts[b], response=text, id=f"{result.prompt_ids[b]}-s{i}",
                               source=source, metadata=metadata))
  logger.info("select_for_sft(mode=%s): kept %d of %d selected samples (skipped %s)", mode, len(examples),
              len(picked), dict(skipped) or "none")
  return examples


def _generation_summary(examples: Sequence[SFTExample]) -> dict[str, Any]:
  """What the examples' metadata say about how they were generated (sets and score range)."""
  def values(key: str) -> list[Any]:
    found = {json.dumps(e.metadata[key], sort_keys=True) for e in examples if key in e.metadata}
    return [json.loads(v) for v in sorted(found)]

  scores = np.array([e.metadata["score"] for e in examples if isinstance(e.metadata.get("score"), (int, float))],
                    np.float64)
  summary = {k: values(k) for k in ("generator", "selection", "threshold", "policy_id", "reward_source",
                                    "num_samples", "temperature", "top_k", "top_p", "max_new_tokens")}
  summary["num_prompts"] = len({json.dumps(prompt_to_json(e.prompt)) for e in examples})
  if scores.size:
    summary["score"] = {"mean": float(np.mean(scores)), "min": float(np.min(scores)), "max": float(np.max(scores))}
  return summary


def write_rejection_sampling_dataset(examples: Sequence[SFTExample], out_dir: str | os.PathLike,
                                     provenance: Mapping[str, Any], *, name: str = "rejection_sampling",
                                     tokenizer_id: Optional[str] = None) -> pathlib.Path:
  """Writes SFT examples as a prepared dataset (`train.jsonl.gz` + manifest) and returns the manifest path.

  Args:
    examples: e.g. from `select_for_sft`; ids must be unique.
    out_dir: output folder (created). An existing dataset there is replaced (atomic file writes,
      the manifest last).
    provenance: how the data were made, recorded verbatim in the manifest's params: e.g. policy
      checkpoint id, prompt dataset id, reward model id, round of the loop, seed. JSON-serialisable.
    name: dataset name (the id is "<name>@<hash of the content>").
    tokenizer_id: `Tokenizer.id`, when relevant to the consumer.

  Returns:
    Path of `manifest.json`. Identical examples and provenance give an identical dataset id.
  """
  if not isinstance(provenance, Mapping):
    raise TypeError(f"provenance must be a mapping, got {type(provenance).__name__}")
  examples = list(examples)
  if not examples:
    raise ValueError("no examples to write (was the threshold above every score?)")
  for k, e in enumerate(examples):
    if not isinstance(e, SFTExample):
      raise TypeError(f"examples[{k}] is a {type(e).__name__}, expected SFTExample")
  duplicate = [k for k, c in collections.Counter(e.id for e in examples).items() if c > 1]
  if duplicate:
    raise ValueError(f"example ids repeat: {duplicate[:3]}")
  params = {"reader": "sft", "kind": "rejection_sampling", "provenance": dict(provenance),
            "generation": _generation_summary(examples)}
  try:  # check before any file is touched, so a bad provenance cannot leave data without a manifest
    json.dumps(params, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise ValueError(f"provenance is not JSON-serialisable: {e}") from None

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  data_path = out_dir / DATA_FILE
  records.write_jsonl(data_path, examples)
  m = manifest.build_manifest(name, root=out_dir, outputs={SPLIT: data_path}, counts={SPLIT: len(examples)},
                              tokenizer_id=tokenizer_id, params=params)
  manifest_path = out_dir / MANIFEST_FILE
  manifest.write_manifest(manifest_path, m)
  return manifest_path
