"""The main job as a sequence of stages sharing one artifact registry, ending in a report."""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Any, Callable

import jax
import ml_collections

from rlhf_jax.algorithms import sft

logger = logging.getLogger(__name__)

STAGES: dict[str, Callable[[ml_collections.ConfigDict, pathlib.Path, dict], dict]] = {
    "sft": lambda cfg, workdir, done: sft.train_sft(cfg.sft, workdir / "sft"),
}


def run_pipeline(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> pathlib.Path:
  """Runs `config.stages` in order and writes `<workdir>/report.md`; returns its path."""
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    raise ValueError(f"config.stages has unknown stages {unknown}; known: {sorted(STAGES)}")
  results: dict[str, Any] = {}
  for stage in config.stages:
    logger.info("=== stage %s ===", stage)
    results[stage] = STAGES[stage](config, workdir, results)
  report = workdir / "report.md"
  if jax.process_index() == 0:
    lines = ["# rlhf_jax pipeline report", ""]
    for stage, summary in results.items():
      lines += [f"## {stage}", "", "```json", json.dumps({k: v for k, v in summary.items() if k != "examples"},
                                                         indent=2), "```", ""]
    report.write_text("\n".join(lines))
  return report
