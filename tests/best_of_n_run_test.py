"""run_best_of_n end to end on a tiny SFT policy, the best-of-N curve against a brute-force
NumPy reference, chunk merging, config validation and pod layouts."""
import dataclasses
import gzip
import itertools
import json
import math

import numpy as np
import pytest

from rlhf_jax.algorithms import best_of_n as bon
from rlhf_jax.algorithms import best_of_n_run, lab_rewards, reward_source
from rlhf_jax.config import pods
from configs import best_of_n as bon_config
from tiny_policy import train_tiny_policy


def _config(registry_dir, artifact_id):
  config = bon_config.get_config("test")
  config.registry_dir = str(registry_dir)
  config.policy = artifact_id
  config.export.require_eos = False  # a tiny policy rarely stops within 8 tokens
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  registry_dir, artifact_id = train_tiny_policy(tmp_path_factory, "a")
  workdir = tmp_path_factory.mktemp("bon")
  results = best_of_n_run.run_best_of_n(_config(registry_dir, artifact_id), workdir)
  return results, workdir, registry_dir, artifact_id


def _brute_force_best(proxy_N, values_N, k):
  """Mean over every k-subset of the value of its proxy-argmax (lowest sample index on ties)."""
  total, count = 0.0, 0
  for subset in itertools.combinations(range(len(proxy_N)), k):
    best = max(subset, key=lambda i: (proxy_N[i], -i))
    total += values_N[best]
    count += 1
  return total / count


def test_curve_matches_brute_force_reference():
  rng = np.random.default_rng(0)
  proxy = rng.integers(0, 4, size=(5, 6)).astype(np.float64)  # many ties
  gold = rng.normal(size=(5, 6))
  lengths = rng.integers(1, 9, size=(5, 6)).astype(np.float64)
  heldout = rng.integers(0, 4, size=(5, 7)).astype(np.float64)
  rows = best_of_n_run.best_of_n_curve(proxy, gold, lengths, heldout, (1, 2, 3, 6))
  for row in rows:
    k = row["n"]
    gold_ref = np.array([_brute_force_best(proxy[b], gold[b], k) for b in range(5)])
    proxy_ref = np.array([_brute_force_best(proxy[b], proxy[b], k) for b in range(5)])
    len_ref = np.array([_brute_force_best(proxy[b], lengths[b], k) for b in range(5)])
    np.testing.assert_allclose(row["gold/best_mean"], gold_ref.mean(), rtol=1e-12)
    np.testing.assert_allclose(row["gold/best_stderr"], gold_ref.std(ddof=1) / math.sqrt(5), rtol=1e-10)
    np.testing.assert_allclose(row["proxy/best_mean"], proxy_ref.mean(), rtol=1e-12)
    np.testing.assert_allclose(row["length/best_mean"], len_ref.mean(), rtol=1e-12)
    np.testing.assert_allclose(row["kl/analytic"], math.log(k) - (k - 1) / k)
    np.testing.assert_allclose(row["gold/gain_std"], (gold_ref.mean() - gold.mean()) / gold.std(), rtol=1e-10)
    # Empirical KL: select among the first k samples, CDF from the held-out pool (+ the selected one).
    sel = proxy[np.arange(5), np.argmax(proxy[:, :k], axis=1)]
    below = np.array([np.sum(heldout[b] < sel[b]) for b in range(5)]) / 8.0
    at = np.array([np.sum(heldout[b] <= sel[b]) + 1 for b in range(5)]) / 8.0
    ratio = (at**k - below**k) / (at - below) if k > 1 else np.ones(5)
    np.testing.assert_allclose(row["kl/empirical"], np.mean(np.log(ratio)), rtol=1e-10, atol=1e-12)
  assert rows[0]["proxy/gain_std"] == 0.0 and rows[-1]["proxy/gain_std"] > 0


def test_results_json_and_samples_are_consistent(run):
  results, workdir, _, artifact_id = run
  assert json.loads((workdir / "results.json").read_text()) == results
  assert results["policy"] == artifact_id and results["reward_source"] == "gold" and results["gold_is_proxy"]
  assert [r["n"] for r in results["per_n"]] == [1, 2, 4]
  samples = [json.loads(l) for l in (workdir / "samples.jsonl").read_text().splitlines()]
  assert len(samples) == 4 and all(len(s["responses"]) == 4 for s in samples)
  proxy = np.array([s["proxy"] for s in samples])
  gold = np.array([s["gold"] for s in samples])
  np.testing.assert_allclose(proxy, gold, rtol=1e-6)  # the proxy IS gold here
  expected = lab_rewards.gold_source("reviews").fn([s["prompt"] for s in samples for _ in range(4)],
                                                  [r for s in samples for r in s["responses"]])
  np.testing.assert_allclose(gold.ravel(), expected, rtol=1e-6)  # scores belong to their texts
  assert [s["best_index"] for s in samples] == np.argmax(proxy, axis=1).tolist()
  np.testing.assert_allclose(results["per_n"][0]["gold/best_mean"], gold.mean(), rtol=1e-6)
  np.testing.assert_allclose(results["per_n"][-1]["gold/best_mean"], gold.max(axis=1).mean(), rtol=1e-6)
  assert all(math.isfinite(row["kl/empirical"]) for row in results["per_n"])
  for name in ("reward_vs_n.png", "reward_vs_kl.png", "gain_vs_kl.png"):
    assert (workdir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exported_dataset_is_each_prompts_best_sample(run):
  results, workdir, _, artifact_id = run
  manifest = json.loads((workdir / "dataset" / "manifest.json").read_text())
  assert manifest["dataset_id"] == results["dataset"]["dataset_id"]
  assert manifest["params"]["provenance"]["policy"] == artifact_id
  assert manifest["params"]["provenance"]["reward_source"] == "gold"
  assert manifest["params"]["generation"]["num_samples"] == [4]
  with gzip.open(workdir / "dataset" / "train.jsonl.gz", "rt") as f:
    examples = [json.loads(l) for l in f]
  samples = {s["prompt_id"]: s for s in map(json.loads, (workdir / "samples.jsonl").read_text().splitlines())}
  assert len(examples) == results["dataset"]["num_examples"] == 4
  for e in examples:
    s = samples[e["metadata"]["prompt_id"]]
    assert e["response"] == s["responses"][s["best_index"]] and e["metadata"]["policy_id"] == artifact_id
    assert e["metadata"]["score"] == pytest.approx(max(s["proxy"]))


def test_distinct_proxy_is_reported_next_to_gold(run, tmp_path, monkeypatch):
  _, _, registry_dir, artifact_id = run
  def by_length(prompts, responses):
    return np.array([float(len(r)) for r in responses])
  monkeypatch.setattr(lab_rewards, "make_reward_source",
                      lambda *a, **k: reward_source.TextRewardFn(by_length, name="chars"))
  config = _config(registry_dir, artifact_id)
  config.export.enabled = False
  results = best_of_n_run.run_best_of_n(config, tmp_path)
  assert results["reward_source"] == "chars" and not results["gold_is_proxy"] and "dataset" not in results
  proxy = [r["proxy/best_mean"] for r in results["per_n"]]
  assert proxy == sorted(proxy) and proxy[-1] > proxy[0]  # E[max of k] grows with k
  samples = [json.loads(l) for l in (tmp_path / "samples.jsonl").read_text().splitlines()]
  assert all(s["proxy"] == [float(len(r)) for r in s["responses"]] for s in samples)


def test_merge_results_concatenates_prompts():
  rng = np.random.default_rng(1)
  b, n, s = 4, 3, 5
  full = bon.BestOfNResult(
      prompts=tuple(f"p{i}" for i in range(b)), prompt_ids=tuple(f"id{i}" for i in range(b)),
      responses=tuple(tuple(f"r{i}{j}" for j in range(n)) for i in range(b)),
      tokens_BxNxS=rng.integers(0, 9, (b, n, s)), mask_BxNxS=np.ones((b, n, s), np.int32),
      ended_with_eos_BxN=np.ones((b, n), bool), scores_BxN=rng.normal(size=(b, n)).astype(np.float32),
      logprobs_BxN=rng.normal(size=(b, n)), best_index_B=rng.integers(0, n, b).astype(np.int32),
      heldout_scores_BxM=rng.normal(size=(b, 2)), sampling=best_of_n_run.sampling_config(
          bon_config.get_config("test").sampling, n), reward_name="gold", policy_id="p@1", key_data=(0, 1),
      metrics={})
  halves = []
  for sl in (slice(0, 1), slice(1, 4)):
    halves.append(dataclasses.replace(
        full, prompts=full.prompts[sl], prompt_ids=full.prompt_ids[sl], responses=full.responses[sl],
        **{f: getattr(full, f)[sl] for f in ("tokens_BxNxS", "mask_BxNxS", "ended_with_eos_BxN", "scores_BxN",
                                             "logprobs_BxN", "best_index_B", "heldout_scores_BxM")}))
  merged = best_of_n_run.merge_results(halves)
  for f in dataclasses.fields(full):
    a, b_ = getattr(merged, f.name), getattr(full, f.name)
    if isinstance(a, np.ndarray):
      np.testing.assert_array_equal(a, b_)
    else:
      assert a == b_, f.name
  with pytest.raises(ValueError, match="differ"):
    best_of_n_run.merge_results([halves[0], dataclasses.replace(halves[1], reward_name="rm")])


@pytest.mark.parametrize("field,value,match", [
    ("best_of_n.num_samples", (0, 2), "best_of_n.num_samples"),
    ("best_of_n.num_samples", (2, 2), "best_of_n.num_samples"),
    ("best_of_n.num_heldout", -1, "best_of_n.num_heldout"),
    ("prompts.num", 6, r"prompts.num \(6\) must be a multiple of prompts.batch_size"),
    ("prompts.task", "poems", "prompts.task"),
    ("prompts.split", "test", "prompts.split"),
    ("sampling.temperature", 0.0, "sampling.temperature"),
    ("sampling.top_p", 0.0, "sampling.top_p"),
    ("reward.source", "bogus", r"reward.source='bogus' is not a reward source"),
    ("reward.source", "verifier", "cannot score prompts.task='reviews'"),
    ("export.selection", "threshold", "export.threshold"),
    ("best_of_n.num_heldout", 1, r"rows per sampler call must be divisible by the data-parallel size 8"),
])
def test_validate_and_derive_names_the_field(field, value, match):
  config = bon_config.get_config("test")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    best_of_n_run.validate_and_derive(config, num_devices=8)


def test_run_needs_a_policy(tmp_path):
  with pytest.raises(ValueError, match="policy is empty"):
    best_of_n_run.run_best_of_n(bon_config.get_config("test"), tmp_path)


@pytest.mark.parametrize("variant", ["", "test"] + list(pods.POD_VARIANTS))
def test_every_variant_validates(variant):
  config = bon_config.get_config(variant)
  if variant in pods.POD_VARIANTS:
    derived = pods.validate_pod(config, best_of_n_run.validate_and_derive)
  else:
    derived = best_of_n_run.validate_and_derive(config, num_devices=8)
  assert derived.max_n == max(config.best_of_n.num_samples)
