"""The main job: the whole pipeline on the built-in lab data.

  python experiments/main.py --workdir runs/main

Stages run in order, each in its own sub-directory of the workdir, passing artifacts by id through
the registry `<workdir>/artifacts`. Re-running resumes finished and interrupted stages.
"""
from absl import app, flags
from ml_collections import config_flags

from rlhf_jax import pipeline
from rlhf_jax.experiment import start

_CONFIG = config_flags.DEFINE_config_file("config", "configs/main.py", "Pipeline config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/main", "Directory for every stage's outputs and the report.")


def main(argv):
  del argv
  start(_CONFIG.value)
  report = pipeline.run_pipeline(_CONFIG.value, _WORKDIR.value)
  print(f"report: {report}")


if __name__ == "__main__":
  app.run(main)
