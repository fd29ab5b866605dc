"""Tests for rlhf_jax.notebooks.figures: metric series, gold-vs-KL series and the PNG figures."""
import math
import types

import numpy as np
import pytest

from rlhf_jax.evaluation import calibration_maps
from rlhf_jax.notebooks import figures
from testdata import numpy_references

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_metric_series_keeps_finite_points_in_order():
  records = [{"step": 1, "loss": 2.0}, {"step": 2}, {"step": 3, "loss": math.nan}, {"step": 4, "loss": 1.5},
             {"step": 5, "loss": "text"}, {"loss": 9.0}]
  x, y = figures.metric_series(records, "loss")
  np.testing.assert_array_equal(x, [1.0, 4.0])
  np.testing.assert_array_equal(y, [2.0, 1.5])
  x, y = figures.metric_series(records, "absent")
  assert x.shape == y.shape == (0,)
  kl, gold = figures.metric_series([{"kl/ref": 0.5, "gold": 1.0}], "gold", x_key="kl/ref")
  assert kl.tolist() == [0.5] and gold.tolist() == [1.0]


def test_gold_vs_kl_series():
  bon = [{"n": 1, "kl/analytic": 0.0, "gold/best_mean": 1.0}, {"n": 4, "kl/analytic": math.log(4) - 0.75,
                                                               "gold/best_mean": 1.5}]
  dpo_summary = {"initial": {"eval/kl/full": 0.0, "eval/gold/total": 1.0}}
  dpo_records = [{"step": 1, "loss/total": 0.7}, {"step": 2, "eval/kl/full": 0.3, "eval/gold/total": 1.2},
                 {"step": 4, "eval/kl/full": 0.9, "eval/gold/total": 1.1}]
  ppo_records = [{"step": 1, "kl/ref": 0.1, "monitor/gold": 1.0, "reward/raw_score": 3.0},
                 {"step": 2, "kl/ref": 0.4, "monitor/gold": 0.8}]
  series = figures.gold_vs_kl_series(best_of_n_rows=bon, dpo_summary=dpo_summary, dpo_records=dpo_records,
                                     ppo_records=ppo_records)
  assert list(series) == ["best-of-N", "DPO", "PPO"]
  np.testing.assert_allclose(series["best-of-N"][0], [0.0, math.log(4) - 0.75])
  np.testing.assert_allclose(series["best-of-N"][1], [1.0, 1.5])
  np.testing.assert_allclose(series["DPO"][0], [0.0, 0.3, 0.9])  # the reference first, then evaluations
  np.testing.assert_allclose(series["DPO"][1], [1.0, 1.2, 1.1])
  np.testing.assert_allclose(series["PPO"][0], [0.1, 0.4])
  np.testing.assert_allclose(series["PPO"][1], [1.0, 0.8])
  # Another KL estimator; methods without data are left out.
  k1 = figures.gold_vs_kl_series(dpo_records=[{"step": 2, "eval/kl/k1": 0.2, "eval/gold/total": 0.5}],
                                 dpo_summary=dpo_summary, dpo_kl_key="eval/kl/k1")
  assert list(k1) == ["DPO"] and k1["DPO"][0].tolist() == [0.2]
  assert figures.gold_vs_kl_series() == {}


def _fake_inspection(num_rows=3, num_tokens=5):
  rng = np.random.default_rng(0)
  arr = lambda: rng.normal(size=(num_rows, num_tokens))  # noqa: E731
  mask = np.ones((num_rows, num_tokens), np.int32)
  mask[1, 3:] = 0
  return types.SimpleNamespace(
      mask_BxS=mask, logp_BxS=arr(), ref_logp_BxS=arr(), k1_BxS=arr(), k3_BxS=arr(), rewards_BxS=arr(),
      values_BxS=arr(), advantages_BxS=arr(), returns_BxS=arr(), score_B=rng.normal(size=num_rows),
      token_texts=[[f"tok{t}" for t in range(int(m.sum()))] for m in mask])


def test_plot_rollout_tokens(tmp_path):
  path = figures.plot_rollout_tokens(_fake_inspection(), [0, 1], tmp_path / "a" / "rollout.png", max_tokens=4)
  assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 10_000
  with pytest.raises(ValueError, match="at least one row"):
    figures.plot_rollout_tokens(_fake_inspection(), [], tmp_path / "b.png")


def test_plot_matrix(tmp_path):
  m = np.array([[np.nan, 0.5], [0.5, np.nan]])
  path = figures.plot_matrix(m, ["a", "b"], tmp_path / "kappa.png", title="kappa")
  assert path.read_bytes().startswith(PNG_MAGIC)
  with pytest.raises(ValueError, match="square matrix"):
    figures.plot_matrix(np.zeros((2, 3)), ["a", "b"], tmp_path / "bad.png")
  with pytest.raises(ValueError, match="one label per row"):
    figures.plot_matrix(np.zeros((2, 2)), ["a"], tmp_path / "bad.png")


def test_plot_reliability_comparison(tmp_path):
  rng = np.random.default_rng(1)
  margins = rng.normal(0.5, 2.0, size=300)
  identity = calibration_maps.PlattScaling(a=1.0, b=0.0)  # sigmoid(margin): the raw probabilities
  squash = calibration_maps.PlattScaling(a=0.3, b=0.0)
  diagrams = figures.plot_reliability_comparison(margins, {"identity": identity, "squash": squash},
                                                 tmp_path / "rel.png", num_bins=8)
  assert (tmp_path / "rel.png").read_bytes().startswith(PNG_MAGIC)
  assert list(diagrams) == ["raw", "identity", "squash"]
  x = np.concatenate([margins, -margins])
  y = np.concatenate([np.ones(300), np.zeros(300)])
  raw_probs = 1.0 / (1.0 + np.exp(-x))
  assert diagrams["raw"].ece == pytest.approx(numpy_references.ece(raw_probs, y, 8), abs=1e-12)
  assert diagrams["identity"].ece == pytest.approx(diagrams["raw"].ece, abs=1e-12)
  squashed = 1.0 / (1.0 + np.exp(-0.3 * x))
  assert diagrams["squash"].ece == pytest.approx(numpy_references.ece(squashed, y, 8), abs=1e-12)
  assert diagrams["squash"].ece != pytest.approx(diagrams["raw"].ece)
