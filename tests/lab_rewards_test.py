"""Reward sources by name and the lab prompts of best-of-N / evaluation runs."""
import numpy as np
import pytest

from rlhf_jax import lab
from rlhf_jax.algorithms import lab_rewards, reward_source, rm_scoring
from rlhf_jax.data.schemas import PromptExample


def test_gold_and_verifier_sources():
  prompts = ["Write a review of the kettle.", "Review of the lamp:"]
  responses = ["The kettle is great. I love it.", "lamp lamp lamp"]
  gold = lab_rewards.make_reward_source("gold")
  assert gold.name == "gold"
  np.testing.assert_allclose(lab_rewards.score_texts(gold, prompts, responses),
                             lab.gold_reward(prompts, responses).total, rtol=1e-6)
  verifier = lab_rewards.make_reward_source("verifier")
  assert verifier.name == "verifier"
  np.testing.assert_array_equal(lab_rewards.score_texts(verifier, ["Compute 2+3=", "Compute 4*5="], ["5", "21"]),
                                [1.0, 0.0])
  with pytest.raises(ValueError, match="lab task"):
    lab_rewards.gold_source("poems")


@pytest.mark.parametrize("name,match", [("", "reward.source must be one of"), ("bogus", "'bogus' is not a reward"),
                                        ("reward_model:", "is not a reward source"),
                                        ("remote:", "is not a reward source"),
                                        ("reward_model:rm@1", "needs an artifact registry")])
def test_bad_names_are_rejected(name, match):
  with pytest.raises(ValueError, match=match):
    lab_rewards.make_reward_source(name)


class FakeScorer:
  """Stands in for a RewardModelScorer: the score is the response length (text) or token count."""

  def __init__(self, tokenizer_id):
    self.tokenizer = type("Tok", (), {"id": tokenizer_id})()

  def score(self, prompts, responses):
    return {"score": np.array([len(r) for r in responses], np.float32)}

  def score_tokens(self, prompt_tokens, prompt_mask, response_tokens, response_mask):
    return np.asarray(response_mask).sum(axis=1).astype(np.float32)


def test_reward_model_source_uses_tokens_only_with_the_policys_tokenizer(monkeypatch, tmp_path):
  loaded = []
  def load_scorer(artifact_id, registry_dir, **overrides):
    loaded.append((artifact_id, registry_dir, overrides))
    return FakeScorer("tok@same")
  monkeypatch.setattr(rm_scoring, "load_scorer", load_scorer)
  batch = reward_source.ScoringBatch(prompts=["p", "q"], responses=["abc", "de"],
                                     prompt_tokens_BxP=np.ones((2, 2), np.int32),
                                     prompt_mask_BxP=np.ones((2, 2), np.int32),
                                     response_tokens_BxS=np.ones((2, 4), np.int32),
                                     response_mask_BxS=np.array([[1, 0, 0, 0], [1, 1, 1, 1]], np.int32))
  same = lab_rewards.make_reward_source("reward_model:rm@1", registry_dir=tmp_path, policy_tokenizer_id="tok@same")
  assert isinstance(same, reward_source.TokenRewardFn) and same.name == "reward_model:rm@1"
  np.testing.assert_array_equal(same(batch), [1.0, 4.0])
  other = lab_rewards.make_reward_source("reward_model:rm@1", registry_dir=tmp_path, policy_tokenizer_id="tok@other")
  assert isinstance(other, reward_source.TextRewardFn)
  np.testing.assert_array_equal(other(batch), [3.0, 2.0])
  assert loaded[0] == ("rm@1", tmp_path, {"name": "reward_model:rm@1"})


def test_remote_source_is_a_text_source():
  source = lab_rewards.make_reward_source("remote:http://127.0.0.1:9", remote_timeout_s=0.5)
  assert isinstance(source, reward_source.TextRewardFn) and source.name == "remote:http://127.0.0.1:9"


def test_lab_prompts_are_the_lab_corpus_and_held_out():
  ev = lab_rewards.lab_prompts("reviews", "eval", 16)
  assert all(isinstance(p, PromptExample) for p in ev)
  corpus = lab.review_prompts(lab.LabConfig.small(num=16), "eval")  # what an SFT run's lab draws
  assert [(p.prompt, p.id) for p in ev] == [(r["prompt"], r["id"]) for r in corpus]
  assert lab_rewards.lab_prompts("reviews", "eval", 40)[:16] == ev  # prefix-stable
  train = {p.prompt for p in lab_rewards.lab_prompts("reviews", "train", 300)}
  assert not train & {p.prompt for p in lab_rewards.lab_prompts("reviews", "eval", 300)}
  assert lab_rewards.lab_prompts("reviews", "eval", 4, seed=1) != lab_rewards.lab_prompts("reviews", "eval", 4)
  arith = lab_rewards.lab_prompts("arithmetic", "eval", 5)
  assert all(lab.solve(p.prompt) == p.metadata["answer"] for p in arith)
  with pytest.raises(ValueError, match="prompts.task"):
    lab_rewards.lab_prompts("poems", "eval", 4)
  with pytest.raises(ValueError, match="prompts.num"):
    lab_rewards.lab_prompts("reviews", "eval", 0)
