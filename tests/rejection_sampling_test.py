"""Tests for rlhf_jax.algorithms.rejection_sampling: selecting SFT examples and writing the dataset."""
import json

import numpy as np
import pytest

from rlhf_jax.algorithms import rejection_sampling as rs
from rlhf_jax.algorithms.best_of_n import BestOfNResult, select_best
from rlhf_jax.data import ingest, manifest
from rlhf_jax.data.schemas import Message, SFTExample
from rlhf_jax.sampling import SamplingConfig

CONVERSATION = (Message("system", "Be brief."), Message("user", "Name a fruit."))


def make_result(policy_id="policy-abc123", prompt_ids=("p-one", "p-two", "p-three")):
  """A hand-made best-of-3 result over 3 prompts (scores chosen to exercise every rule)."""
  scores = np.array([[1.0, 3.0, 3.0],     # tie on the best: index 1 wins
                     [0.5, 0.2, 0.1],     # best is an empty (whitespace) response
                     [2.0, 2.5, -1.0]],   # best was cut off (no EOS)
                    np.float32)
  responses = (("one", "Apple.", "Pear."), ("  ", "Kiwi.", "Fig."), ("Plum.", "Grape and", "no"))
  ended = np.array([[True, True, True], [True, True, True], [True, False, True]])
  mask = np.zeros((3, 3, 5), np.int32)
  mask[..., :3] = 1
  mask[2, 1, :] = 1  # the truncated one filled the buffer
  tokens = np.where(mask == 1, 7, 0).astype(np.int32)
  return BestOfNResult(
      prompts=("Name a fruit.", CONVERSATION, "Another fruit?"), prompt_ids=tuple(prompt_ids),
      responses=responses, tokens_BxNxS=tokens, mask_BxNxS=mask, ended_with_eos_BxN=ended,
      scores_BxN=scores, logprobs_BxN=-np.arange(9, dtype=np.float64).reshape(3, 3),
      best_index_B=select_best(scores), heldout_scores_BxM=None,
      sampling=SamplingConfig(max_new_tokens=5, temperature=0.7, top_k=40, num_samples=3),
      reward_name="gold", policy_id=policy_id, key_data=(0, 42), metrics={})


def test_best_mode_keeps_each_prompts_best_with_metadata():
  res = make_result()
  examples = rs.select_for_sft(res, "best")
  # Prompt 1's best is empty and prompt 2's best has no EOS: only prompt 0 survives.
  assert [e.id for e in examples] == ["p-one-s1"]
  e = examples[0]
  assert e.prompt == "Name a fruit." and e.response == "Apple." and e.source == "rejection_sampling"
  assert e.metadata == {
      "generator": "best_of_n", "selection": "best", "threshold": None, "policy_id": "policy-abc123",
      "prompt_id": "p-one", "num_samples": 3, "sample_index": 1, "temperature": 0.7, "top_k": 40, "top_p": 1.0,
      "max_new_tokens": 5, "reward_source": "gold", "score": 3.0, "prompt_score_mean": pytest.approx(7 / 3),
      "logprob": -1.0, "num_tokens": 3, "ended_with_eos": True, "key_data": [0, 42]}

  kept = rs.select_for_sft(res, "best", require_eos=False, skip_empty=False)
  assert [(e.id, e.response) for e in kept] == [("p-one-s1", "Apple."), ("p-two-s0", "  "),
                                                ("p-three-s1", "Grape and")]
  assert kept[1].prompt == CONVERSATION
  assert kept[2].metadata["ended_with_eos"] is False and kept[2].metadata["num_tokens"] == 5
  # A floor on the best score drops prompts whose best is not good enough.
  floored = rs.select_for_sft(res, "best", threshold=1.0, require_eos=False, skip_empty=False)
  assert [e.id for e in floored] == ["p-one-s1", "p-three-s1"]
  assert floored[0].metadata["threshold"] == 1.0


def test_threshold_mode_keeps_every_sample_above_the_bar():
  res = make_result()
  examples = rs.select_for_sft(res, mode="threshold", threshold=0.5)
  # >= 0.5: (0,0) (0,1) (0,2) (1,0: empty, skipped) (2,0) (2,1: no EOS, skipped).
  assert [e.id for e in examples] == ["p-one-s0", "p-one-s1", "p-one-s2", "p-three-s0"]
  assert [e.metadata["score"] for e in examples] == [1.0, 3.0, 3.0, 2.0]
  assert all(e.metadata["selection"] == "threshold" and e.metadata["threshold"] == 0.5 for e in examples)
  everything = rs.select_for_sft(res, "threshold", threshold=-10.0, require_eos=False, skip_empty=False)
  assert len(everything) == 9
  assert rs.select_for_sft(res, "threshold", threshold=3.5) == []


def test_selection_errors():
  res = make_result()
  with pytest.raises(ValueError, match="mode must be one of"):
    rs.select_for_sft(res, "top")
  with pytest.raises(ValueError, match="needs a threshold"):
    rs.select_for_sft(res, "threshold")
  with pytest.raises(ValueError, match="finite"):
    rs.select_for_sft(res, "threshold", threshold=float("nan"))
  with pytest.raises(ValueError, match="policy checkpoint id is unknown"):
    rs.select_for_sft(make_result(policy_id=None))
  assert rs.select_for_sft(make_result(policy_id=None), policy_id="ckpt-9")[0].metadata["policy_id"] == "ckpt-9"
  with pytest.raises(ValueError, match="contradicts"):
    rs.select_for_sft(res, policy_id="other")
  with pytest.raises(ValueError, match="prompt ids repeat"):
    rs.select_for_sft(make_result(prompt_ids=("a", "b", "a")))


PROVENANCE = {"round": 1, "prompts_dataset": "lab_prompts@0123456789ab", "reward_model": "rm-77", "seed": 3}


def test_written_dataset_round_trips_with_a_manifest(tmp_path):
  examples = rs.select_for_sft(make_result(), "threshold", threshold=0.5)
  path = rs.write_rejection_sampling_dataset(examples, tmp_path / "a", PROVENANCE, tokenizer_id="tok-1")
  assert path == tmp_path / "a" / "manifest.json"
  m = manifest.verify_manifest(path)
  assert m["name"] == "rejection_sampling" and m["dataset_id"].startswith("rejection_sampling@")
  assert m["splits"]["train"]["count"] == 4 and m["tokenizer_id"] == "tok-1"
  assert m["params"]["provenance"] == PROVENANCE and m["params"]["reader"] == "sft"
  gen = m["params"]["generation"]
  assert gen["policy_id"] == ["policy-abc123"] and gen["reward_source"] == ["gold"]
  assert gen["num_samples"] == [3] and gen["temperature"] == [0.7] and gen["selection"] == ["threshold"]
  assert gen["num_prompts"] == 2
  assert gen["score"] == {"mean": 2.25, "min": 1.0, "max": 3.0}

  read, report = ingest.read_sft(tmp_path / "a" / "train.jsonl.gz")
  assert [e.to_dict() for e in read] == [e.to_dict() for e in examples]
  assert report.kept == 4 and not report.dropped

  # Same content: same id (bytes are deterministic); different provenance or scores: a new id.
  again = manifest.load_manifest(rs.write_rejection_sampling_dataset(examples, tmp_path / "b", PROVENANCE,
                                                                     tokenizer_id="tok-1"))
  assert again["dataset_id"] == m["dataset_id"]
  other = manifest.load_manifest(rs.write_rejection_sampling_dataset(examples, tmp_path / "c",
                                                                     {**PROVENANCE, "round": 2}, tokenizer_id="tok-1"))
  assert other["dataset_id"] != m["dataset_id"]
  edited = [SFTExample(prompt=e.prompt, response=e.response, id=e.id, source=e.source,
                       metadata={**e.metadata, "score": e.metadata["score"] + 1}) for e in examples]
  moved = manifest.load_manifest(rs.write_rejection_sampling_dataset(edited, tmp_path / "d", PROVENANCE,
                                                                     tokenizer_id="tok-1"))
  assert moved["dataset_id"] != m["dataset_id"]


def test_writer_errors_leave_no_files(tmp_path):
  examples = rs.select_for_sft(make_result(), "threshold", threshold=0.5)
  out = tmp_path / "x"
  with pytest.raises(ValueError, match="no examples"):
    rs.write_rejection_sampling_dataset([], out, PROVENANCE)
  with pytest.raises(ValueError, match="ids repeat: \\['p-one-s0'\\]"):
    rs.write_rejection_sampling_dataset(examples + examples[:1], out, PROVENANCE)
  with pytest.raises(TypeError, match=r"examples\[1\] is a dict"):
    rs.write_rejection_sampling_dataset([examples[0], examples[1].to_dict()], out, PROVENANCE)
  with pytest.raises(ValueError, match="provenance is not JSON-serialisable"):
    rs.write_rejection_sampling_dataset(examples, out, {"seed": np.int64(3)})
  with pytest.raises(TypeError, match="provenance must be a mapping"):
    rs.write_rejection_sampling_dataset(examples, out, ["round", 1])
  assert not out.exists() or not any(out.iterdir())
  # The manifest is plain JSON others can read without this library.
  path = rs.write_rejection_sampling_dataset(examples, out, PROVENANCE)
  assert json.loads(path.read_text())["params"]["kind"] == "rejection_sampling"
