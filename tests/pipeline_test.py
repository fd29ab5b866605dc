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
