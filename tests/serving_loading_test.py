"""Tests for rlhf_jax/serving/loading.py with a real exported reward model (RM).

A module fixture trains an RM for 2 steps on configs/reward_model.py:test; the server loads its
export (kind="checkpoint") and must answer exactly what the in-process scorer computes.
"""
import dataclasses
import json
import pathlib

import httpx
import numpy as np
import pytest

from rlhf_jax.algorithms import reward_model_train, rm_scoring
from rlhf_jax.checkpointing import registry
from rlhf_jax.config import load_sibling
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.serving import loading, server
from rlhf_jax.serving.config import ModelSpec, ServingConfig

CONFIG_FILE = pathlib.Path(__file__).resolve().parent.parent / "configs" / "reward_model.py"
PROMPTS = ["Review of the lamp:", "Write a review of the kettle.", "Review of the lamp:", "Hi"]
RESPONSES = ["A bright and sturdy lamp.", "It boils fast but leaks.", "Dim. Broke in a week.", ""]
_HTTP = httpx.Client(timeout=30.0)


@pytest.fixture(scope="module")
def exported_rm(tmp_path_factory, testdata_dir):
  """(artifact record, registry dir) of an RM trained for 2 steps and exported."""
  root = tmp_path_factory.mktemp("serving_rm")
  config = load_sibling(str(CONFIG_FILE), "reward_model").get_config("test")
  config.tokenizer.path = str(testdata_dir / "tokenizer_512.model")  # no tokenizer training
  config.train.total_steps = config.optimizer.total_steps = 2
  summary = reward_model_train.train_reward_model(config, root / "rm")
  registry_dir = root / "artifacts"
  return registry.resolve(registry_dir, summary["artifact_id"]), registry_dir


def _score(srv, **extra):
  r = _HTTP.post(srv.url + "/v1/score", content=json.dumps(
      {"model": "rm", "prompts": PROMPTS, "responses": RESPONSES, **extra}))
  assert r.status_code == 200, r.text
  return r.json()


def test_http_scores_of_a_loaded_export_equal_the_in_process_scorer(exported_rm):
  record, registry_dir = exported_rm
  expected = rm_scoring.load_scorer(record["artifact_id"], registry_dir).score(PROMPTS, RESPONSES)
  assert np.std(expected["raw"]) > 0  # the pairs get different rewards
  config = ServingConfig(models=(ModelSpec(name="rm", kind="checkpoint",
                                           path=record["params_path"]),))
  reg = loading.build_registry(config)
  scorer = reg.get("rm").scorer
  assert isinstance(scorer, rm_scoring.RewardModelScorer)
  assert scorer.version == record["artifact_id"]  # the recorded version: the artifact id
  assert scorer.normalisation is not None and scorer.calibration is not None

  with server.ServerThread(server.build_app(config, reg)) as srv:
    body = _score(srv)
    assert body["version"] == record["artifact_id"]
    # One request of 4 items is one batch in both places: same bucket, same compiled program.
    np.testing.assert_allclose(body["scores"], expected["score"], rtol=1e-6, atol=1e-6)
    for key in ("raw", "normalized"):
      np.testing.assert_allclose(body["outputs"][key], expected[key], rtol=1e-6, atol=1e-6)
    assert not np.allclose(body["outputs"]["raw"], body["outputs"]["normalized"])

    # The admin route loads another version of the same export through the same loader.
    r = _HTTP.post(srv.url + "/v1/models/rm/versions", content=json.dumps(
        {"spec": {"kind": "checkpoint", "path": record["params_path"], "version": "rm@pinned"}}))
    assert r.status_code == 200, r.text
    pinned = _score(srv, version="rm@pinned")
    assert pinned["version"] == "rm@pinned"
    np.testing.assert_allclose(pinned["scores"], body["scores"], rtol=1e-6, atol=1e-6)

    # Length is checked with the RM's own tokenizer and chat template against its largest bucket.
    r = _HTTP.post(srv.url + "/v1/score", content=json.dumps(
        {"model": "rm", "prompts": ["Review:"], "responses": [" lamp" * scorer.max_seq_len]}))
    assert r.status_code == 422 and r.json()["error"]["kind"] == "input_too_long", r.text


def test_spec_fields_cap_buckets_and_replace_version_and_tokenizer(exported_rm, testdata_dir):
  record, _ = exported_rm
  exported = rm_scoring.Buckets.from_dict(rm_scoring.load_spec(
      rm_scoring.spec_path(record["params_path"]))["buckets"])
  assert len(exported.batch_sizes) > 1 and len(exported.lengths) > 1  # so that capping shows
  spec = ModelSpec(name="rm", kind="checkpoint", path=record["params_path"],
                   max_batch_size=exported.batch_sizes[0], max_seq_len=exported.lengths[0],
                   version="rm@v2", tokenizer_path=str(testdata_dir / "tokenizer_512.model"))
  scorer = loading.load_scorer(spec)
  assert (scorer.max_batch_size, scorer.max_seq_len) == (exported.batch_sizes[0],
                                                        exported.lengths[0])
  assert scorer.version == "rm@v2" and scorer.name == "rm"
  uncapped = loading.load_scorer(dataclasses.replace(spec, max_batch_size=10**6,
                                                     max_seq_len=10**6))
  assert (uncapped.max_batch_size, uncapped.max_seq_len) == (max(exported.batch_sizes),
                                                            max(exported.lengths))
  with pytest.raises(ValueError, match="model 'rm'.*max_seq_len=1 is below"):
    loading.load_scorer(dataclasses.replace(spec, max_seq_len=1))


def test_a_foreign_tokenizer_or_a_missing_export_is_refused(exported_rm, tmp_path):
  record, _ = exported_rm
  other = Tokenizer.train([f"a review of item {i}: fine" for i in range(200)], vocab_size=300)
  other.save(tmp_path / "other.model")
  spec = ModelSpec(name="rm", kind="checkpoint", path=record["params_path"],
                   tokenizer_path=str(tmp_path / "other.model"))
  with pytest.raises(ValueError, match="tokenizer_path .*other.model.* trained with"):
    loading.load_scorer(spec)
  with pytest.raises(FileNotFoundError, match="model 'rm'.*no exported reward model"):
    loading.load_scorer(dataclasses.replace(spec, path=str(tmp_path / "missing")))
