"""Tests for rlhf_jax/serving/config.py and loading.py, and configs/serve_reward_model.py."""
import dataclasses
import importlib.util
import pathlib

import pytest

from rlhf_jax.serving import config as config_lib
from rlhf_jax.serving import loading
from rlhf_jax.serving.scorer import HashScorer

_CONFIG_FILE = pathlib.Path(__file__).resolve().parent.parent / "configs" / "serve_reward_model.py"


def _get_config():
  spec = importlib.util.spec_from_file_location("serve_reward_model_config", _CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_config_file_matches_library_defaults_and_loads_in_demo_mode():
  cfg = _get_config()
  cfg.demo = True
  serving = config_lib.ServingConfig.from_config_dict(cfg)
  defaults = config_lib.ServingConfig()
  assert serving.host == "127.0.0.1" == defaults.host  # loopback unless asked otherwise
  assert serving.limits == defaults.limits and serving.batching == defaults.batching
  for field in ("port", "cache_max_entries", "stats_window", "canary_fraction", "admin_enabled"):
    assert getattr(serving, field) == getattr(defaults, field), field
  assert [m.name for m in serving.models] == ["reward"]
  registry = loading.build_registry(serving)
  assert isinstance(registry.get("reward").scorer, HashScorer)


def test_checkpoints_fail_fast_with_a_clear_message():
  cfg = _get_config()
  with pytest.raises(ValueError, match="path is required for kind='checkpoint'"):
    config_lib.ServingConfig.from_config_dict(cfg)
  cfg.models.main.path = "/nonexistent/ckpt"
  serving = config_lib.ServingConfig.from_config_dict(cfg)
  with pytest.raises(FileNotFoundError, match="model 'reward'.*no exported reward model"):
    loading.build_registry(serving)


def test_unknown_and_invalid_fields_are_named():
  cfg = _get_config().to_dict()
  cfg["models"]["main"]["kind"] = "hash"
  with pytest.raises(ValueError, match="config.limits: unknown field\\(s\\) \\['max_items'\\]"):
    config_lib.ServingConfig.from_config_dict({**cfg, "limits": {"max_items": 3}})
  with pytest.raises(ValueError, match="config: unknown field\\(s\\) \\['prot'\\]"):
    config_lib.ServingConfig.from_config_dict({**cfg, "prot": 1})
  bad = [({"port": 70000}, "config.port"), ({"canary_fraction": 2.0}, "config.canary_fraction"),
         ({"log_level": "loud"}, "config.log_level"),
         ({"batching": {"max_wait_ms": -1.0}}, "config.batching.max_wait_ms"),
         ({"batching": {"default_timeout_ms": 5.0, "max_timeout_ms": 1.0}}, "default_timeout_ms"),
         ({"limits": {"max_items_per_request": 0}}, "config.limits.max_items_per_request")]
  for override, message in bad:
    with pytest.raises(ValueError, match=message):
      config_lib.ServingConfig.from_config_dict({**cfg, **override})


def test_model_roles_are_checked():
  stable = config_lib.ModelSpec(name="rm")
  with pytest.raises(ValueError, match="more than one role='stable'"):
    config_lib.ServingConfig(models=(stable, config_lib.ModelSpec(name="rm", salt="2")))
  with pytest.raises(ValueError, match="role='canary' but the model has no role='stable'"):
    config_lib.ServingConfig(models=(config_lib.ModelSpec(name="rm", role="canary"),))
  with pytest.raises(ValueError, match="kind must be one of"):
    config_lib.ServingConfig(models=(config_lib.ModelSpec(name="rm", kind="onnx"),))


def test_build_registry_starts_canaries_at_the_configured_fraction():
  canary = config_lib.ModelSpec(name="rm", salt="2", role="canary")
  serving = config_lib.ServingConfig(canary_fraction=0.25,
                                     models=(canary, config_lib.ModelSpec(name="rm")))
  model = loading.build_registry(serving).describe()[0]
  assert model["stable"] == HashScorer(name="rm", salt="0").version
  assert model["canary"] == HashScorer(name="rm", salt="2").version
  assert model["canary_fraction"] == 0.25


def test_spec_from_json_checks_types_and_names():
  spec = loading.spec_from_json("rm", {"kind": "hash", "salt": "x", "offset": 1, "max_seq_len": 9})
  assert spec == dataclasses.replace(config_lib.ModelSpec(name="rm"), salt="x", offset=1,
                                     max_seq_len=9)
  with pytest.raises(ValueError, match="'max_seq_len' must be int, got '9'"):
    loading.spec_from_json("rm", {"max_seq_len": "9"})
  with pytest.raises(ValueError, match="'max_seq_len' must be int, got True"):
    loading.spec_from_json("rm", {"max_seq_len": True})
  with pytest.raises(ValueError, match="unknown model spec field\\(s\\) \\['weights'\\]"):
    loading.spec_from_json("rm", {"weights": "x"})
  with pytest.raises(ValueError, match="differs from the model in the URL"):
    loading.spec_from_json("rm", {"name": "other"})
