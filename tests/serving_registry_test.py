"""Tests for rlhf_jax/serving/registry.py: routing, canary life cycle, stats, KS statistic."""
import numpy as np
import pytest
import scipy.stats

from rlhf_jax.serving import errors
from rlhf_jax.serving import registry as registry_lib
from rlhf_jax.serving.scorer import HashScorer


def _registry(seed=0, window=10_000):
  reg = registry_lib.ModelRegistry(seed=seed, stats_window=window)
  v1 = HashScorer(name="rm", salt="1")
  v2 = HashScorer(name="rm", salt="2")
  reg.add(v1)
  reg.add(v2)
  return reg, v1.version, v2.version


def test_first_version_is_stable_and_others_wait_on_standby():
  reg, v1, v2 = _registry()
  assert reg.get("rm").version == v1
  assert all(reg.route("rm", routing_key=str(k)).version == v1 for k in range(100))
  assert reg.route("rm", version=v2).version == v2  # pinning bypasses routing
  with pytest.raises(errors.UnknownModel, match="unknown model 'nope'; loaded models: \\['rm'\\]"):
    reg.route("nope")
  with pytest.raises(errors.UnknownModel, match="has no version 'v9'"):
    reg.route("rm", version="v9")
  with pytest.raises(errors.Conflict, match="already has version"):
    reg.add(HashScorer(name="rm", salt="1"))
  with pytest.raises(errors.Conflict, match="no stable version"):
    reg.add(HashScorer(name="other"), role="canary")
  with pytest.raises(errors.InvalidRequest, match="role must be"):
    reg.add(HashScorer(name="rm", salt="3"), role="primary")


def test_canary_routing_is_deterministic_sticky_and_matches_the_fraction():
  reg, v1, v2 = _registry(seed=7)
  keys = [f"req-{i}" for i in range(5000)]
  reg.set_canary("rm", v2, 0.3)
  first = [reg.route("rm", routing_key=k).version for k in keys]
  assert first == [reg.route("rm", routing_key=k).version for k in keys]  # deterministic
  share = np.mean([v == v2 for v in first])
  assert abs(share - 0.3) < 0.03
  # Exactly the keys whose hash falls under the fraction (independent recomputation).
  expected = [v2 if registry_lib.route_unit(7, "rm", k) < 0.3 else v1 for k in keys]
  assert first == expected
  # Raising the fraction only moves keys from stable to canary.
  reg.set_canary("rm", v2, 0.6)
  second = [reg.route("rm", routing_key=k).version for k in keys]
  assert all(b == v2 for a, b in zip(first, second) if a == v2)
  assert abs(np.mean([v == v2 for v in second]) - 0.6) < 0.03
  # Another seed reshuffles which keys go to the canary.
  other, _, w2 = _registry(seed=8)
  other.set_canary("rm", w2, 0.3)
  assert [other.route("rm", routing_key=k).version == w2 for k in keys] != [v == v2 for v in first]
  # Fractions 0 and 1 are exact.
  reg.set_canary("rm", v2, 0.0)
  assert all(reg.route("rm", routing_key=k).version == v1 for k in keys[:500])
  reg.set_canary("rm", v2, 1.0)
  assert all(reg.route("rm", routing_key=k).version == v2 for k in keys[:500])
  with pytest.raises(errors.InvalidRequest, match="fraction must lie in \\[0, 1\\], got 1.5"):
    reg.set_canary("rm", v2, 1.5)
  with pytest.raises(errors.Conflict, match="already the stable"):
    reg.set_canary("rm", v1, 0.5)


def test_promote_rollback_set_stable_and_remove():
  reg, v1, v2 = _registry()
  with pytest.raises(errors.Conflict, match="no canary to promote"):
    reg.promote("rm")
  with pytest.raises(errors.Conflict, match="no canary to roll back"):
    reg.rollback("rm")
  reg.set_canary("rm", v2, 0.5)
  assert reg.rollback("rm") == v2
  assert reg.describe()[0]["canary"] is None and reg.describe()[0]["canary_fraction"] == 0.0
  assert all(reg.route("rm", routing_key=str(k)).version == v1 for k in range(200))
  reg.set_canary("rm", v2, 0.5)
  assert reg.promote("rm") == v1
  assert reg.get("rm").version == v2
  assert all(reg.route("rm", routing_key=str(k)).version == v2 for k in range(200))
  with pytest.raises(errors.Conflict, match="is the stable version"):
    reg.remove("rm", v2)
  reg.set_stable("rm", v1)  # undo the promotion without a restart
  assert reg.get("rm").version == v1
  reg.remove("rm", v2)
  assert [v["version"] for v in reg.describe()[0]["versions"]] == [v1]
  v3 = HashScorer(name="rm", salt="3")
  reg.add(v3, role="canary", canary_fraction=0.25)
  assert reg.describe()[0]["canary"] == v3.version
  with pytest.raises(errors.Conflict, match="is the canary version"):
    reg.remove("rm", v3.version)
  reg.add(HashScorer(name="rm", salt="4"), role="stable")
  assert reg.get("rm").version == HashScorer(name="rm", salt="4").version


def test_version_stats_match_numpy():
  stats = registry_lib.VersionStats(window=100)
  scores = np.random.default_rng(0).normal(2.0, 3.0, size=250)
  stats.add(scores[:100])
  stats.add(scores[100:])
  s = stats.summary()
  assert s["count"] == 250 and s["window"] == 100
  assert s["mean"] == pytest.approx(scores.mean(), abs=1e-12)
  assert s["std"] == pytest.approx(scores.std(), abs=1e-12)  # exact over all scores
  recent = scores[-100:]  # quantiles are over the window only
  assert s["quantiles"]["p50"] == pytest.approx(np.median(recent))
  assert s["quantiles"]["p05"] == pytest.approx(np.quantile(recent, 0.05))
  assert s["quantiles"]["p95"] == pytest.approx(np.quantile(recent, 0.95))
  assert (s["min"], s["max"]) == (recent.min(), recent.max())
  assert registry_lib.VersionStats(window=5).summary() == {"count": 0, "window": 0}


@pytest.mark.parametrize("n,m,shift", [(50, 80, 0.0), (200, 30, 0.5), (40, 40, 3.0)])
def test_ks_statistic_matches_scipy(n, m, shift):
  rng = np.random.default_rng(n + m)
  a = rng.normal(size=n)
  b = rng.normal(shift, 1.0, size=m)
  assert registry_lib.ks_statistic(a, b) == pytest.approx(scipy.stats.ks_2samp(a, b).statistic,
                                                          abs=1e-12)
  ties_a, ties_b = np.round(a), np.round(b)  # many ties
  assert registry_lib.ks_statistic(ties_a, ties_b) == pytest.approx(
      scipy.stats.ks_2samp(ties_a, ties_b).statistic, abs=1e-12)


def test_ks_statistic_special_cases():
  x = np.arange(10.0)
  assert registry_lib.ks_statistic(x, x) == 0.0
  assert registry_lib.ks_statistic([0, 1], [2, 3]) == 1.0
  with pytest.raises(ValueError, match="two non-empty samples"):
    registry_lib.ks_statistic([], [1.0])


def test_compare_reports_both_distributions_and_their_ks_statistic():
  reg = registry_lib.ModelRegistry()
  stable, canary = HashScorer(name="rm"), HashScorer(name="rm", offset=2.0)
  reg.add(stable)
  reg.add(canary, role="canary", canary_fraction=0.5)
  reg.rollback("rm")
  with pytest.raises(errors.InvalidRequest, match="has no canary; name the second version"):
    reg.compare("rm")
  reg.set_canary("rm", canary.version, 0.5)
  responses = [f"r{i}" for i in range(400)]
  reg.get("rm", stable.version).stats.add(stable.score_batch(["p"] * 400, responses)["score"])
  reg.get("rm", canary.version).stats.add(canary.score_batch(["p"] * 400, responses)["score"])
  out = reg.compare("rm")
  assert out["a"]["version"] == stable.version and out["b"]["version"] == canary.version
  assert out["mean_difference"] == pytest.approx(2.0, abs=0.1)
  assert out["ks_statistic"] > 0.6
  same = reg.compare("rm", stable.version, stable.version)
  assert same["ks_statistic"] == 0.0


def test_a_rejected_add_leaves_the_registry_unchanged():
  reg, v1, _ = _registry()
  before = reg.describe()
  with pytest.raises(errors.InvalidRequest, match="fraction must lie in"):
    reg.add(HashScorer(name="rm", salt="9"), role="canary", canary_fraction=-0.1)
  assert reg.describe() == before
