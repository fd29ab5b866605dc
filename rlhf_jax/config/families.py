"""Config families: find configs/*.py, load them by path, and resolve their trainer and validator.

The convention every configs/<family>.py follows is written in `rlhf_jax.config`'s docstring:
`get_config(variant)`, `TRAINER = "package.module:function"` (or None for configs that do not
train), and for training families a `validate_and_derive(config, num_devices=None,
num_processes=None)` next to the trainer. Tests, scripts/tpu/ and `python -m rlhf_jax.config.pods`
use these helpers so that they all read the convention the same way.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pathlib
import types
from typing import Any, Callable, Optional

import ml_collections

VALIDATOR_NAME = "validate_and_derive"


class ConventionError(ValueError):
  """A config file does not follow the convention (the message names the file and what is missing)."""


@dataclasses.dataclass(frozen=True)
class Family:
  """One configs/<name>.py file and what it declares."""

  name: str  # file stem, e.g. "sft"
  path: pathlib.Path
  module: types.ModuleType
  trainer_spec: Optional[str]  # "package.module:function", or None for configs that do not train

  @property
  def trains(self) -> bool:
    return self.trainer_spec is not None

  @property
  def requires(self) -> dict[str, str]:
    """REQUIRES: config field -> upstream family whose artifact id it takes (e.g. {"policy": "sft"})."""
    return dict(getattr(self.module, "REQUIRES", {}))

  @property
  def variants(self) -> tuple[str, ...]:
    return tuple(getattr(self.module, "VARIANTS", ("",)))

  def get_config(self, variant: str = "") -> ml_collections.ConfigDict:
    return self.module.get_config(variant) if variant else self.module.get_config()

  def trainer(self) -> Callable[[ml_collections.ConfigDict, Any], Any]:
    """The run function named by TRAINER."""
    if self.trainer_spec is None:
      raise ConventionError(f"{self.path}: TRAINER is None (this config does not train)")
    return resolve(self.trainer_spec, where=f"{self.path}: TRAINER")

  def validator(self) -> Callable[..., Any]:
    """`validate_and_derive` of the trainer's module."""
    module_name = self.trainer_spec.split(":")[0] if self.trainer_spec else ""
    fn = getattr(importlib.import_module(module_name), VALIDATOR_NAME, None) if module_name else None
    if fn is None:
      raise ConventionError(f"{self.path}: the trainer module {module_name!r} has no {VALIDATOR_NAME}(config, "
                            f"num_devices=None, num_processes=None)")
    return fn


def resolve(spec: str, where: str = "spec") -> Callable[..., Any]:
  """The callable named by "package.module:function"."""
  if not isinstance(spec, str) or spec.count(":") != 1:
    raise ConventionError(f"{where} must look like 'package.module:function', got {spec!r}")
  module_name, attr = spec.split(":")
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ConventionError(f"{where}: cannot import {module_name!r} ({e})") from None
  fn = getattr(module, attr, None)
  if not callable(fn):
    raise ConventionError(f"{where}: {module_name!r} has no function {attr!r}")
  return fn


def load_module(path: str | os.PathLike) -> types.ModuleType:
  """Imports a config file by path (whatever the working directory or sys.path)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no config file {path}")
  spec = importlib.util.spec_from_file_location(f"rlhf_jax_configs_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_family(path: str | os.PathLike) -> Family:
  """Loads configs/<name>.py and reads its declarations; ConventionError names what is missing."""
  path = pathlib.Path(path)
  module = load_module(path)
  if not callable(getattr(module, "get_config", None)):
    raise ConventionError(f"{path}: no get_config(variant='') function")
  if not hasattr(module, "TRAINER"):
    raise ConventionError(f"{path}: declares no TRAINER; add TRAINER = 'package.module:function' (its run "
                          f"function) or TRAINER = None if it does not train (see rlhf_jax/config/__init__.py)")
  return Family(name=path.stem, path=path, module=module, trainer_spec=module.TRAINER)


def config_files(configs_dir: str | os.PathLike) -> list[pathlib.Path]:
  """Every configs/*.py file except package markers, sorted."""
  return sorted(p for p in pathlib.Path(configs_dir).glob("*.py") if not p.name.startswith("_"))


def load_config_arg(arg: str) -> tuple[Family, ml_collections.ConfigDict]:
  """`path/to/config.py[:variant]` (the --config syntax) -> (family, config)."""
  path, _, variant = arg.partition(":")
  family = load_family(path)
  return family, family.get_config(variant)
