"""Tests for rlhf_jax.evaluation.plots: a non-empty PNG is written."""
import numpy as np
import pytest

from rlhf_jax.evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_reliability_diagram_png(tmp_path):
  rng = np.random.default_rng(0)
  probs = rng.random(200)
  labels = (rng.random(200) < probs).astype(float)
  path = tmp_path / "sub" / "reliability.png"
  diagram = plots.plot_reliability_diagram(probs, labels, path, num_bins=8, strategy="quantile", title="rm")
  data = path.read_bytes()
  assert data.startswith(PNG_MAGIC) and len(data) > 5000
  assert diagram.count.sum() == 200


def test_curves_png(tmp_path):
  n = np.array([1, 2, 4, 8, 16])
  path = plots.plot_curves({"reward": (n, np.log(n)), "plain": [0.1, 0.3, 0.2]}, tmp_path / "curves.png",
                           xlabel="N", ylabel="value", title="best-of-N", logx=True)
  assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 5000
  with pytest.raises(ValueError, match="series 'bad'"):
    plots.plot_curves({"bad": ([1, 2], [1, 2, 3])}, tmp_path / "bad.png", "x", "y")
  with pytest.raises(ValueError, match="at least one series"):
    plots.plot_curves({}, tmp_path / "empty.png", "x", "y")


def test_moving_average_matches_a_loop_and_clamps_the_window():
  values = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
  want = [np.mean(values[i:i + 3]) for i in range(3)]
  np.testing.assert_allclose(plots.moving_average(values, 3), want)
  np.testing.assert_allclose(plots.moving_average(values, 1), values)
  np.testing.assert_allclose(plots.moving_average(values, 99), [values.mean()])  # window > len: one mean
