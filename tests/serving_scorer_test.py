"""Tests for rlhf_jax/serving/scorer.py: toy scorer, model adapter, versions, output checks."""
import hashlib

import numpy as np
import pytest

from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.serving import scorer as scorer_lib


def _reference_unit(salt: str, member: int, prompt: str, response: str) -> float:
  """Independent re-derivation of HashScorer's member uniform: sha256 of length-prefixed parts."""
  h = hashlib.sha256()
  for part in (salt, str(member), prompt, response):
    data = part.encode()
    h.update(len(data).to_bytes(8, "little") + data)
  return int(h.hexdigest()[:16], 16) / 2.0**64


@pytest.mark.parametrize("ensemble_size,offset", [(1, 0.0), (3, 0.7), (5, -2.0)])
def test_hash_scorer_matches_float64_reference(ensemble_size, offset):
  prompts = ["Hi", "Write a poem.", "", "é ü ✓"]
  responses = ["Hello!", "Roses are red.", "empty prompt", "unicode"]
  s = scorer_lib.HashScorer(name="toy", salt="s1", offset=offset, ensemble_size=ensemble_size)
  out = s.score_batch(prompts, responses)
  members = np.array([[np.sqrt(12.0) * (_reference_unit("s1", e, p, r) - 0.5) + offset
                       for e in range(ensemble_size)] for p, r in zip(prompts, responses)])
  np.testing.assert_allclose(out["score"], members.mean(1), rtol=0, atol=1e-12)
  np.testing.assert_allclose(out["raw"], members.mean(1), rtol=0, atol=1e-12)
  np.testing.assert_allclose(out["normalized"], (members.mean(1) - offset) * np.sqrt(ensemble_size),
                             rtol=0, atol=1e-12)
  if ensemble_size > 1:
    np.testing.assert_allclose(out["std"], members.std(1), rtol=0, atol=1e-12)
  else:
    assert "std" not in out


def test_hash_scorer_member_distribution_has_mean_offset_and_unit_variance():
  s = scorer_lib.HashScorer(salt="dist", offset=1.5, ensemble_size=1)
  scores = s.score_batch(["p"] * 4000, [f"r{i}" for i in range(4000)])["score"]
  assert abs(scores.mean() - 1.5) < 0.06
  assert abs(scores.std() - 1.0) < 0.04
  assert scores.min() >= 1.5 - np.sqrt(3) and scores.max() <= 1.5 + np.sqrt(3)


def test_hash_scorer_versions_track_what_changes_scores():
  a = scorer_lib.HashScorer(salt="a")
  assert a.version == scorer_lib.HashScorer(salt="a", max_batch_size=3).version
  assert a.version != scorer_lib.HashScorer(salt="b").version
  assert a.version != scorer_lib.HashScorer(salt="a", offset=1.0).version
  assert a.version != scorer_lib.HashScorer(salt="a", ensemble_size=2).version
  assert scorer_lib.HashScorer(salt="a", version="pinned").version == "pinned"
  np.testing.assert_array_equal(a.score_batch(["x"], ["y"])["score"],
                                scorer_lib.HashScorer(salt="a").score_batch(["x"], ["y"])["score"])
  with pytest.raises(ValueError, match="ensemble_size"):
    scorer_lib.HashScorer(ensemble_size=0)


def test_hash_scorer_validate_names_the_problem():
  s = scorer_lib.HashScorer(max_seq_len=10)
  s.validate("12345", "67890")  # exactly at the limit
  with pytest.raises(scorer_lib.InputTooLongError,
                     match="11 bytes, over the model's max_seq_len of 10"):
    s.validate("12345", "678901")
  with pytest.raises(scorer_lib.InputTooLongError, match="12 bytes"):
    s.validate("é" * 3, "123456")  # counted in UTF-8 bytes, not characters
  with pytest.raises(ValueError, match="response must be a string, got int"):
    s.validate("p", 3)


def test_model_scorer_checks_length_with_the_tokenizer(testdata_dir):
  tok = Tokenizer.load(testdata_dir / "tokenizer_512.model")
  prompt, response = "Write a review of the kettle.", "The kettle is great. I love it."
  joined = len(tok.encode(prompt + response)) + 2
  calls = []

  def score_fn(prompts, responses):
    calls.append(len(prompts))
    return {"score": np.arange(len(prompts), dtype=np.float32), "std": np.ones(len(prompts))}

  s = scorer_lib.ModelScorer("rm", "v1", score_fn, tok, max_seq_len=joined, max_batch_size=2)
  assert s.token_length(prompt, response) == joined  # separate pieces concatenate
  s.validate(prompt, response)
  tight = scorer_lib.ModelScorer("rm", "v1", score_fn, tok, max_seq_len=joined - 1,
                                max_batch_size=2)
  with pytest.raises(scorer_lib.InputTooLongError,
                     match=f"{joined} tokens \\(with 2 special\\), over the model's max_seq_len of "
                           f"{joined - 1}"):
    tight.validate(prompt, response)
  out = s.score_batch([prompt, prompt], [response, "x"])
  np.testing.assert_array_equal(out["score"], [0.0, 1.0])
  assert calls == [2]
  with pytest.raises(ValueError, match="exceeds max_batch_size 2"):
    s.score_batch(["a"] * 3, ["b"] * 3)
  assert isinstance(s, scorer_lib.Scorer) and isinstance(scorer_lib.HashScorer(), scorer_lib.Scorer)


def test_model_scorer_runs_the_extra_validate_fn(testdata_dir):
  tok = Tokenizer.load(testdata_dir / "tokenizer_512.model")

  def must_mention_product(prompt, response):
    del response
    if "kettle" not in prompt:
      raise ValueError("prompt names no product")

  s = scorer_lib.ModelScorer("rm", "v1", lambda p, r: {"score": np.zeros(len(p))}, tok,
                             max_seq_len=64, max_batch_size=4, validate_fn=must_mention_product)
  s.validate("the kettle", "ok")
  with pytest.raises(ValueError, match="names no product"):
    s.validate("the toaster", "ok")
  with pytest.raises(ValueError, match="max_seq_len > num_special_tokens"):
    scorer_lib.ModelScorer("rm", "v1", lambda p, r: {}, tok, max_seq_len=2, max_batch_size=1)


def test_check_outputs_rejects_malformed_scorer_outputs():
  ok = scorer_lib.check_outputs({"score": np.float32([1, 2]), "std": [0.1, 0.2]}, 2)
  assert ok["score"].dtype == np.float64 and ok["std"].tolist() == [0.1, 0.2]
  nan = scorer_lib.check_outputs({"score": [np.nan, 1.0]}, 2)  # kept: the batcher fails the item
  assert np.isnan(nan["score"][0])
  with pytest.raises(ValueError, match="no 'score'"):
    scorer_lib.check_outputs({"raw": [1.0]}, 1)
  with pytest.raises(ValueError, match="'score' has shape \\(3,\\), expected \\(2,\\)"):
    scorer_lib.check_outputs({"score": [1.0, 2.0, 3.0]}, 2)
  with pytest.raises(ValueError, match="unknown output 'logits'"):
    scorer_lib.check_outputs({"score": [1.0], "logits": [1.0]}, 1)
  with pytest.raises(ValueError, match="dict of arrays"):
    scorer_lib.check_outputs([1.0], 1)


def test_content_and_directory_versions(tmp_path):
  assert scorer_lib.content_version("ab", "c") != scorer_lib.content_version("a", "bc")
  assert scorer_lib.content_version("x", b"y") == scorer_lib.content_version(b"x", "y")
  assert len(scorer_lib.content_version("x")) == 16
  ckpt = tmp_path / "ckpt"
  (ckpt / "sub").mkdir(parents=True)
  (ckpt / "params").write_bytes(b"\x00\x01")
  (ckpt / "sub" / "meta.json").write_text("{}")
  v1 = scorer_lib.directory_version(ckpt)
  assert v1 == scorer_lib.directory_version(ckpt)
  (ckpt / "params").write_bytes(b"\x00\x02")
  assert scorer_lib.directory_version(ckpt) != v1
  (ckpt / "params").write_bytes(b"\x00\x01")
  (ckpt / "sub" / "meta.json").rename(ckpt / "meta.json")  # same bytes, different layout
  assert scorer_lib.directory_version(ckpt) != v1
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint files"):
    scorer_lib.directory_version(tmp_path / "empty")
