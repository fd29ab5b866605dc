"""The evaluation suite on two tiny SFT policies (JSON structure and internal consistency), its
pure analysis functions on simulated players, and the teacher-forced scorer against a naive forward."""
import json
import math

import jax
import numpy as np
import pytest

from rlhf_jax import ops
from rlhf_jax.algorithms import policy_loading, reward_source
from rlhf_jax.config import pods
from rlhf_jax.data import chat
from rlhf_jax.evaluation import ratings, suite
from configs import evaluate as eval_config
from tiny_policy import train_tiny_policy


def _chars(prompts, responses):
  return np.array([float(len(r)) for r in responses])


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
  registry_dir, a = train_tiny_policy(tmp_path_factory, "a")
  _, b = train_tiny_policy(tmp_path_factory, "b", steps=20, seed=1)
  return registry_dir, a, b


@pytest.fixture(scope="module")
def run(policies, tmp_path_factory):
  registry_dir, a, b = policies
  config = eval_config.get_config("test")
  config.registry_dir = str(registry_dir)
  config.reference = a
  config.policies = f"{a},{b}"  # a against itself (independent re-draw) and b
  workdir = tmp_path_factory.mktemp("eval")
  judges = {"chars": reward_source.TextRewardFn(_chars, name="chars")}
  return suite.run_evaluation(config, workdir, judges=judges), workdir, a, b


def _samples(workdir):
  rows = [json.loads(l) for l in (workdir / "samples.jsonl").read_text().splitlines()]
  by_player = {}
  for r in rows:
    by_player.setdefault(r["player"], []).append(r)
  return by_player


def test_report_structure(run):
  report, workdir, a, b = run
  assert json.loads((workdir / "evaluation.json").read_text()) == report
  assert [p["name"] for p in report["players"]] == ["reference", a, b]
  assert [p["artifact_id"] for p in report["players"]] == [a, a, b]
  assert report["judges"] == ["gold", "chars"] and report["reward_model_agreement"] is None
  for section in ("win_rates", "ratings"):
    assert set(report[section]) == {"gold", "chars"}
  assert set(report["win_rates"]["gold"]) == {a, b}
  for section in ("hacking", "arithmetic", "kl_to_reference", "off_policy", "on_policy"):
    assert set(report[section]) == {"reference", a, b}, section
  samples = _samples(workdir)
  assert {k: len(v) for k, v in samples.items()} == {"reference": 8, a: 8, b: 8}
  for name in ("win_rates", "ratings", "reward_vs_kl", "off_policy", "pass_at_k"):
    assert (workdir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_win_rates_match_the_samples_and_self_play_covers_one_half(run):
  report, workdir, a, b = run
  samples = _samples(workdir)
  for judge in ("gold", "chars"):
    ref = np.array([r[f"score/{judge}"] for r in samples["reference"]])
    for name in (a, b):
      mine = np.array([r[f"score/{judge}"] for r in samples[name]])
      assert all(r["prompt"] == s["prompt"] for r, s in zip(samples[name], samples["reference"]))
      row = report["win_rates"][judge][name]
      assert (row["num_wins"], row["num_ties"], row["num_losses"]) == (
          int(np.sum(mine > ref)), int(np.sum(mine == ref)), int(np.sum(mine < ref)))
      assert row["win_rate"] == pytest.approx((np.sum(mine > ref) + 0.5 * np.sum(mine == ref)) / 8)
      assert row["ci_low"] <= row["win_rate"] <= row["ci_high"]
    self_play = report["win_rates"][judge][a]
    assert self_play["ci_low"] <= 0.5 <= self_play["ci_high"]
    # Independent re-draws: the self-play samples are not the reference's.
  assert [r["response"] for r in samples[a]] != [r["response"] for r in samples["reference"]]


def test_ratings_order_matches_win_rates(run):
  report, _, a, b = run
  for judge in ("gold", "chars"):
    bt, wr = report["ratings"][judge]["bradley_terry"], report["win_rates"][judge]
    assert bt["reference"] == 0.0 and report["ratings"][judge]["bradley_terry_converged"]
    assert report["ratings"][judge]["num_games"] == 3 * 8
    for name in (a, b):
      # Beating the reference more than half the time <=> stronger than the reference.
      assert np.sign(bt[name]) == np.sign(wr[name]["win_rate"] - 0.5)


def test_kl_and_importance_sampling_identities(run):
  report, workdir, a, b = run
  kl, ope = report["kl_to_reference"], report["off_policy"]
  for name in ("reference", a):  # same parameters as the reference: every log-ratio is 0
    assert abs(kl[name]["k1"]) < 1e-6 and abs(kl[name]["k3"]) < 1e-6
    ref_gold = report["on_policy"]["reference"]["gold"]["mean"]
    assert ope[name]["ordinary"] == pytest.approx(ref_gold) and ope[name]["self_normalized"] == pytest.approx(ref_gold)
    assert ope[name]["ess"] == pytest.approx(8.0) and ope[name]["max_weight_fraction"] == pytest.approx(1 / 8)
  assert kl[b]["k3"] > 0.1 and kl[b]["k1"] > 0.1  # a 20-step policy is far from a 120-step one
  ref_gold = np.array([r["score/gold"] for r in _samples(workdir)["reference"]])
  assert ref_gold.min() - 1e-9 <= ope[b]["self_normalized"] <= ref_gold.max() + 1e-9
  assert 1.0 <= ope[b]["ess"] < 8.0
  assert ope[b]["on_policy"] == pytest.approx(report["on_policy"][b]["gold"]["mean"])


def test_arithmetic_and_hacking_sections(run):
  report, workdir, _, _ = run
  samples = _samples(workdir)
  for name, row in report["arithmetic"].items():
    assert row["num_problems"] == 4 and row["num_samples"] == 4
    assert row["pass@1"] == pytest.approx(row["accuracy"])  # unbiased pass@1 is the mean accuracy
    assert row["pass@1"] <= row["pass@2"] <= row["pass@4"] <= 1.0
    assert 0.0 <= row["best@4/logprob"] <= row["pass@4"]
    words = np.mean([len(r["response"].split()) for r in samples[name]])
    assert report["hacking"][name]["gold"]["length/mean"] == pytest.approx(words)


def test_scorer_matches_an_unpadded_forward(policies):
  registry_dir, _, b = policies
  policy = policy_loading.load_policy(registry_dir, b)
  prompts = ["Write a review of the kettle.", "Review of the lamp:", "How is the strap of the watch?"]
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, policy.tokenizer.vocab_size, size=(3, 5)).astype(np.int32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], np.int32)
  logp = suite.Scorer(policy, batch_size=2)(prompts, tokens, mask)  # two chunks, the last padded
  forward = jax.jit(lambda params, ids: policy.model.apply({"params": params}, ids).logits)
  for r, prompt in enumerate(prompts):
    ids = chat.render_prompt(policy.tokenizer, prompt) + tokens[r][mask[r] == 1].tolist()
    logits = np.asarray(forward(policy.params, np.asarray([ids], np.int32))[0], np.float64)
    logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
    p = len(ids) - int(mask[r].sum())
    expected = [logits[p - 1 + s, ids[p + s]] - logz[p - 1 + s] for s in range(int(mask[r].sum()))]
    np.testing.assert_allclose(logp[r][mask[r] == 1], expected, atol=1e-4)
    assert np.all(logp[r][mask[r] == 0] == 0.0)


def test_sequence_kl_matches_ops_estimators():
  rng = np.random.default_rng(0)
  logp, ref = np.log(rng.uniform(0.05, 1, (4, 6))), np.log(rng.uniform(0.05, 1, (4, 6)))
  mask = (rng.uniform(size=(4, 6)) < 0.7).astype(np.int32)
  k1, k3 = suite.sequence_kl(logp, ref, mask)
  np.testing.assert_allclose(k1, np.sum(np.asarray(ops.kl_k1(logp, ref)) * mask, axis=1), rtol=1e-5)
  np.testing.assert_allclose(k3, np.sum(np.asarray(ops.kl_k3(logp, ref)) * mask, axis=1), rtol=1e-5)
  r = ref - logp  # float64 reference of k3 = exp(r) - 1 - r
  np.testing.assert_allclose(k3, np.sum((np.exp(r) - 1 - r) * mask, axis=1), rtol=1e-12)


def _player(name, scores, **kw):
  n = len(next(iter(scores.values())))
  return suite.Player(name=name, artifact_id=name, prompts=["p"] * n, responses=["r"] * n,
                      scores={k: np.asarray(v, np.float64) for k, v in scores.items()}, **kw)


def test_ratings_and_win_rates_recover_simulated_strengths():
  rng = np.random.default_rng(0)
  strengths = [0.0, 1.0, -1.0, 0.5]
  players = [_player(f"p{i}", {"gold": s + rng.gumbel(size=2000)}) for i, s in enumerate(strengths)]
  table = suite.rating_table(players, tie_tolerance=0.0, elo_k_factor=4.0, elo_num_orderings=3, bt_prior_games=0.0,
                             seed=0)["gold"]
  bt = np.array([table["bradley_terry"][p.name] for p in players]) / ratings.ELO_PER_NAT
  # Gumbel noise: P(i beats j) = sigmoid(s_i - s_j) exactly, so the BT strengths are the s_i.
  np.testing.assert_allclose(bt, np.array(strengths) - strengths[0], atol=0.1)
  elo = np.array([table["elo"][p.name] for p in players])
  assert np.argsort(elo).tolist() == np.argsort(strengths).tolist()
  wr = suite.win_rate_table(players, num_bootstrap=1000, confidence=0.9, tie_tolerance=0.0, seed=0)["gold"]
  for i, s in enumerate(strengths[1:], start=1):
    assert wr[f"p{i}"]["win_rate"] == pytest.approx(1 / (1 + math.exp(-s)), abs=0.03)


def test_agreement_functions():
  rng = np.random.default_rng(0)
  gold = [rng.normal(size=50) for _ in range(3)]
  same = [_player(str(i), {"gold": g, "proxy": 2 * g + 1}) for i, g in enumerate(gold)]
  flipped = [_player(str(i), {"gold": g, "proxy": -g}) for i, g in enumerate(gold)]
  assert suite.agreement_on_players(same, "proxy") == pytest.approx(
      {"pairwise_agreement": 1.0, "num_pairs": 150, "spearman": 1.0, "pearson": 1.0})
  assert suite.agreement_on_players(flipped, "proxy")["pairwise_agreement"] == 0.0
  out = suite.label_agreement(np.array([2.0, 1.0, 0.0, 5.0]), np.array([1.0, 1.0, 3.0, 0.0]),
                              np.array([False, False, False, True]))
  assert out == {"accuracy": pytest.approx(0.5), "num_pairs": 3}  # win, tie (1/2), loss; the tie pair dropped


def test_policy_ids_and_validation():
  assert suite.parse_policy_ids(" a@1, b@2 ,") == ["a@1", "b@2"]
  with pytest.raises(ValueError, match="policies is empty"):
    suite.parse_policy_ids("")
  with pytest.raises(ValueError, match=r"lists \['a@1'\] more than once"):
    suite.parse_policy_ids("a@1,a@1")
  for field, value, match in [("prompts.num", 0, "prompts.num"), ("win_rate.confidence", 1.0, "win_rate.confidence"),
                              ("judges.proxy", "gold", "judges.proxy"), ("judges.proxy", "x", "judges.proxy='x'"),
                              ("arithmetic.num_prompts", -1, "arithmetic.num_prompts")]:
    config = eval_config.get_config("test")
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=match):
      suite.validate_and_derive(config, num_devices=8)
  for variant in pods.POD_VARIANTS:
    pods.validate_pod(eval_config.get_config(variant), suite.validate_and_derive)


def test_run_needs_policies_and_a_reference(tmp_path):
  config = eval_config.get_config("test")
  with pytest.raises(ValueError, match="policies is empty"):
    suite.run_evaluation(config, tmp_path)
  config.policies = "a@1"
  with pytest.raises(ValueError, match="reference is empty"):
    suite.run_evaluation(config, tmp_path)
