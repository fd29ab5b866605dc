"""Serves reward models over HTTP (rlhf_jax/serving).

  python experiments/serve_reward_model.py --config=configs/serve_reward_model.py --config.demo=True
  curl -s localhost:8000/v1/score -d '{"model":"reward","prompts":["Hi"],"responses":["Yo"]}'

`--config.models.main.path=<workdir>/export/<name>` serves a reward model exported by
experiments/train_reward_model.py (rlhf_jax.serving.loading.load_checkpoint_scorer);
`--config.demo=True` serves the deterministic toy scorer under every configured model name.
`--port_file` receives the bound port (useful with --config.port=0).
"""
from __future__ import annotations

import logging
import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from rlhf_jax import serving
from rlhf_jax.serving import structured_log

_DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parent.parent / "configs"
                      / "serve_reward_model.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Serving config file.",
                                          lock_config=True)
_PORT_FILE = flags.DEFINE_string("port_file", None, "Write the bound TCP port to this file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = serving.ServingConfig.from_config_dict(_CONFIG.value)
  structured_log.configure(config.log_level)
  registry = serving.build_registry(config)
  structured_log.log_event(logging.getLogger(structured_log.EVENT_LOGGER), "serving",
                           host=config.host, port=config.port, demo=config.demo,
                           models=registry.describe())
  serving.serve(config, registry, port_file=_PORT_FILE.value)


if __name__ == "__main__":
  app.run(main)
