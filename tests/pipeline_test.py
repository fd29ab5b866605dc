"""The main job's pipeline on its test variant: every stage runs, artifacts flow by id, the report is written."""
import json
import pathlib

import pytest

from rlhf_jax import pipeline
from rlhf_jax.config import load_sibling

MAIN = load_sibling(str(pathlib.Path(__file__).parent.parent / "configs" / "main.py"), "main")


def test_stage_order_is_validated():
  with pytest.raises(ValueError, match="needs"):
    pipeline.validate_stages(("ppo", "sft"))
  with pytest.raises(ValueError, match="unknown"):
    pipeline.validate_stages(("sft", "ppo2"))
  pipeline.validate_stages(MAIN.STAGES)


def test_pipeline_runs_every_stage_and_writes_the_report(tmp_path):
  report = pipeline.run_pipeline(MAIN.get_config("test"), tmp_path)
  text = report.read_text()
  for section in ("Gold reward vs KL", "Proxy vs gold", "Reward-model calibration", "Training curves"):
    assert section in text
  for figure in ("frontier.png", "overoptimisation.png", "reliability.png", "training_curves.png"):
    assert (tmp_path / "figures" / figure).stat().st_size > 1000
  summary = json.loads((tmp_path / "pipeline_summary.json").read_text())
  sft_id = summary["sft"]["artifact_id"]
  # Downstream stages started from the SFT artifact, by id, through the shared registry.
  assert summary["dpo"]["reference_id"] == sft_id
  assert summary["best_of_n"]["policy"] == sft_id
  assert summary["evaluate"]["reference"] == sft_id
  registered = {p.stem for p in (tmp_path / "artifacts").glob("*.json")}
  for stage in ("sft", "reward_model", "ppo", "dpo"):
    assert summary[stage]["artifact_id"] in registered
  points = pipeline.frontier_points(summary)
  assert set(points) == {"sft", "ppo", "dpo", "best-of-N"}


def test_frontier_rows_pair_each_policy_with_its_own_baseline():
  results = {
      "ppo": {"artifact_id": "ppo@1"}, "dpo": {"artifact_id": "dpo@1"},
      "evaluate": {"num_prompts": 128, "players": [{"name": "reference", "artifact_id": "sft@1"},
                                                   {"name": "ppo@1", "artifact_id": "ppo@1"}],
                   "kl_to_reference": {"reference": {"k3": 0.0}, "ppo@1": {"k3": 5.0}},
                   "on_policy": {"reference": {"gold": {"mean": 0.3, "stderr": 0.3}},
                                 "ppo@1": {"gold": {"mean": 1.5, "stderr": 0.4}}}},
      "best_of_n": {"num_prompts": 64, "per_n": [
          {"n": 1, "kl/analytic": 0.0, "gold/best_mean": 0.2, "gold/best_stderr": 0.1},
          {"n": 4, "kl/analytic": 0.64, "gold/best_mean": 0.8, "gold/best_stderr": 0.1}]}}
  rows = pipeline.frontier_rows(results)
  assert [(r.method, r.n, r.num_prompts) for r in rows] == [
      ("sft", 1, 128), ("ppo", 1, 128), ("best-of-N", 1, 64), ("best-of-N", 4, 64)]
  table = "\n".join(pipeline._frontier_table(rows))  # pylint: disable=protected-access
  assert "| ppo | 1 | 5.00 | 1.500 +- 0.400 | +1.200 (+2.4 s.e.) | 128 |" in table  # 1.2 / hypot(.3, .4)
  assert "| best-of-N | 4 | 0.64 | 0.800 +- 0.100 | +0.600 (+4.2 s.e.) | 64 |" in table  # vs N=1, not SFT
  assert pipeline.frontier_points(results)["best-of-N"] == ([0.0, 0.64], [0.2, 0.8])
