"""Tests for rlhf_jax.evaluation.reward_model_eval against hand-computed and SciPy values."""
import json

import numpy as np
import pytest
import scipy.stats

from rlhf_jax.evaluation import calibration_maps
from rlhf_jax.evaluation import reward_model_eval as rme
from testdata import numpy_references

R_C = np.array([2.0, 0.5, -1.0, 0.3, 1.0, 0.0])
R_R = np.array([0.0, 1.0, -1.5, 0.3, -2.0, 0.7])
TIE = np.array([False, False, False, False, False, True])


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_report_matches_hand_and_brute_force_values():
  report = rme.evaluate_preferences(R_C, R_R, tie_B=TIE)
  d = (R_C - R_R)[~TIE]  # [2, -0.5, 0.5, 0, 3]
  assert report["num_pairs"] == 6 and report["num_ties"] == 1
  assert report["accuracy"] == pytest.approx((1 + 0 + 1 + 0.5 + 1) / 5)
  # AUC by brute force over (positive margin d_i, negative margin -d_j) pairs, ties half.
  wins = [(1.0 if a > -b else 0.5 if a == -b else 0.0) for a in d for b in d]
  assert report["auc"] == pytest.approx(np.mean(wins))
  assert report["log_loss"] == pytest.approx(np.mean(np.logaddexp(0.0, -d)))
  p = np.concatenate([_sigmoid(d), _sigmoid(-d)])
  y = np.concatenate([np.ones(5), np.zeros(5)])
  assert report["ece"] == pytest.approx(numpy_references.ece(p, y))
  assert report["brier"] == pytest.approx(np.mean((p - y) ** 2))
  assert report["mean_margin"] == pytest.approx(d.mean())
  assert report["tie_mean_abs_margin"] == pytest.approx(0.7)
  assert "gold" not in report and "by_annotator" not in report


def test_gold_correlations_and_breakdowns():
  g_c = np.array([1.0, -0.2, 0.4, 0.1, 0.0, 0.5])
  g_r = np.array([0.5, 0.3, 0.4, -0.3, 0.2, 0.1])
  annotators = ["x", "y", "x", "y", "x", "z"]
  sources = ["s1", "s1", "s1", "s2", "s2", "s2"]
  report = rme.evaluate_preferences(R_C, R_R, tie_B=TIE, annotator_ids=annotators,
                                    sources=sources, gold_chosen_B=g_c, gold_rejected_B=g_r)
  scores, golds = np.concatenate([R_C, R_R]), np.concatenate([g_c, g_r])
  assert report["gold"]["spearman"] == pytest.approx(scipy.stats.spearmanr(scores, golds)[0])
  assert report["gold"]["pearson"] == pytest.approx(scipy.stats.pearsonr(scores, golds)[0])
  # Gold accuracy: pairs with a gold preference (pair 2 is a gold tie), RM margin sign vs gold.
  # gold margins [0.5, -0.5, 0, 0.4, -0.2, 0.4]; RM margins [2, -0.5, 0.5, 0, 3, -0.7]
  assert report["gold"]["num_pairs"] == 5
  assert report["gold"]["accuracy"] == pytest.approx((1 + 1 + 0.5 + 0 + 0) / 5)
  x = report["by_annotator"]["x"]  # pairs 0, 2, 4
  assert x["num_pairs"] == 3 and x["accuracy"] == pytest.approx(1.0)
  assert x["gold_accuracy"] == pytest.approx(0.5) and x["gold_num_pairs"] == 2
  assert x["label_gold_agreement"] == pytest.approx(0.5)  # pair 0 agrees, pair 4 does not
  z = report["by_annotator"]["z"]  # only the tie pair
  assert z["num_ties"] == 1 and np.isnan(z["accuracy"])
  assert report["by_source"]["s2"]["accuracy"] == pytest.approx((0.5 + 1) / 2)
  with pytest.raises(ValueError, match="both gold"):
    rme.evaluate_preferences(R_C, R_R, gold_chosen_B=g_c)


def _skewed(n, seed):
  """An over-confident RM: P(chosen preferred | margin d) = sigmoid(d / 4), margins large."""
  rng = np.random.default_rng(seed)
  d = rng.normal(2.0, 3.0, n)
  flip = rng.random(n) > _sigmoid(d / 4.0)
  d = np.where(flip, -d, d)  # the label says "chosen", so a flipped pair has margin -d
  return d, np.zeros(n)


def test_isotonic_is_monotone_and_improves_ece_on_a_skewed_example():
  fit_c, fit_r = _skewed(2000, 0)
  test_c, test_r = _skewed(2000, 1)
  iso = rme.fit_pairwise_calibration(fit_c, fit_r, "isotonic")
  platt = rme.fit_pairwise_calibration(fit_c, fit_r, "platt")
  grid = np.linspace(-15, 15, 301)
  assert np.all(np.diff(iso(grid)) >= 0)
  # Platt recovers the true slope 1/4 of the skew (no offset: the data are symmetrised).
  assert platt.a == pytest.approx(0.25, abs=0.03) and platt.b == pytest.approx(0.0, abs=1e-9)
  report = rme.evaluate_preferences(test_c, test_r, calibrations={"isotonic": iso, "platt": platt})
  assert report["ece"] > 0.1  # raw sigmoid(d) is badly over-confident
  assert report["calibrated"]["isotonic"]["ece"] < 0.5 * report["ece"]
  assert report["calibrated"]["platt"]["ece"] < 0.5 * report["ece"]
  assert report["calibrated"]["isotonic"]["log_loss"] < report["log_loss"]


def test_calibration_maps_round_trip_through_json():
  fit_c, fit_r = _skewed(300, 2)
  probe = np.linspace(-10, 10, 41)
  for kind in ("platt", "isotonic"):
    fitted = rme.fit_pairwise_calibration(fit_c, fit_r, kind)
    loaded = rme.calibration_from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert type(loaded) is type(fitted) and loaded == fitted
    np.testing.assert_array_equal(loaded(probe), fitted(probe))
  with pytest.raises(ValueError, match="kind"):
    rme.calibration_from_dict({"kind": "beta"})
  with pytest.raises(ValueError, match="calibration kind"):
    rme.fit_pairwise_calibration(fit_c, fit_r, "beta")
  assert isinstance(rme.calibration_from_dict({"kind": "platt", "a": 1, "b": 0}),
                    calibration_maps.PlattScaling)


def test_flat_metrics_report_file_and_reliability_png(tmp_path):
  report = rme.evaluate_preferences(R_C, R_R, tie_B=TIE, annotator_ids=list("abcdef"),
                                    calibrations={"platt": calibration_maps.PlattScaling(0.5, 0.0)})
  flat = rme.flat_metrics(report)
  assert flat["accuracy"] == report["accuracy"]
  assert flat["calibrated/platt/ece"] == report["calibrated"]["platt"]["ece"]
  assert not any(k.startswith("by_") for k in flat)
  path = rme.write_report(report, tmp_path / "report.json")
  loaded = json.loads(path.read_text())
  assert loaded["by_annotator"]["f"]["accuracy"] is None  # NaN is written as null
  diagram = rme.write_reliability_diagram(R_C, R_R, tmp_path / "rel.png", tie_B=TIE)
  assert (tmp_path / "rel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert int(diagram.count.sum()) == 10  # 5 decided pairs, both orders
