"""Tests for rlhf_jax.notebooks.environment: scale, configs directory, configs, work directories."""
import pathlib

import pytest

from rlhf_jax.notebooks import environment

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_scale_from_the_environment(monkeypatch):
  monkeypatch.delenv(environment.SCALE_ENV, raising=False)
  assert environment.notebook_scale() == "tiny"
  assert environment.notebook_scale(default="test") == "test"
  monkeypatch.setenv(environment.SCALE_ENV, " test ")
  assert environment.notebook_scale() == "test"
  monkeypatch.setenv(environment.SCALE_ENV, "huge")
  with pytest.raises(ValueError, match="RLHF_JAX_NOTEBOOK_SCALE='huge'"):
    environment.notebook_scale()


def test_configs_dir_search(monkeypatch, tmp_path):
  monkeypatch.delenv(environment.CONFIGS_ENV, raising=False)
  assert environment.configs_dir() == REPO / "configs"
  monkeypatch.setenv(environment.CONFIGS_ENV, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="RLHF_JAX_CONFIGS_DIR"):
    environment.configs_dir()
  (tmp_path / "sft.py").write_text("")
  assert environment.configs_dir() == tmp_path


def test_load_config_picks_the_variant_of_the_scale(monkeypatch):
  monkeypatch.delenv(environment.CONFIGS_ENV, raising=False)
  test = environment.load_config("sft", "test", {"train.total_steps": 7, "optimizer.lr": 0.5})
  assert test.model.preset == "test" and test.train.total_steps == 7 and test.optimizer.lr == 0.5
  tiny = environment.load_config("sft", "tiny")
  assert tiny.model.preset == "tiny" and tiny.train.total_steps != 7
  main = environment.load_config("main", "test")  # sections of the main job
  assert main.sft.model.preset == "test" and main.dpo.model.preset == "test"


def test_load_config_errors_name_the_problem(monkeypatch):
  monkeypatch.delenv(environment.CONFIGS_ENV, raising=False)
  with pytest.raises(ValueError, match="scale must be one of"):
    environment.load_config("sft", "medium")
  with pytest.raises(FileNotFoundError, match="no config family 'nope'.*'sft'"):
    environment.load_config("nope", "test")
  with pytest.raises(KeyError, match="no field 'total_stepz' in train"):
    environment.load_config("sft", "test", {"train.total_stepz": 1})
  with pytest.raises(KeyError, match="no section 'trian'"):
    environment.load_config("sft", "test", {"trian.total_steps": 1})
  with pytest.raises(KeyError, match="no section 'seed.x'"):  # a field is not a section
    environment.load_config("sft", "test", {"seed.x.y": 1})


def test_apply_overrides_sets_nested_fields():
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({"a": 1, "b": {"c": {"d": "x"}}})
  assert environment.apply_overrides(config, {"a": 2, "b.c.d": "y"}) is config
  assert config.a == 2 and config.b.c.d == "y"
  assert environment.apply_overrides(config, None).a == 2


def test_notebook_workdir(monkeypatch, tmp_path):
  monkeypatch.setenv(environment.WORKDIR_ENV, str(tmp_path / "root"))
  path = environment.notebook_workdir("quickstart", "test")
  assert path == tmp_path / "root" / "quickstart_test" and path.is_dir()
  other = environment.notebook_workdir("quickstart", "tiny", root=tmp_path / "elsewhere")
  assert other == tmp_path / "elsewhere" / "quickstart_tiny" and other.is_dir()
  with pytest.raises(ValueError, match="scale"):
    environment.notebook_workdir("quickstart", "big")
