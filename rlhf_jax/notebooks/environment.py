"""Where a notebook runs: its scale, the repo's configs/ directory, family configs, work directories.

Environment variables (all optional):

  RLHF_JAX_NOTEBOOK_SCALE    "tiny" (default): the `tiny` model, the documented CPU run (minutes);
                             "test": each family's "test" config variant (a toy model, seconds),
                             which the test suite uses to execute the notebooks.
  RLHF_JAX_NOTEBOOK_WORKDIR  root of the notebooks' run directories (default ./runs/notebooks).
  RLHF_JAX_CONFIGS_DIR       the configs/ directory (default: next to the rlhf_jax package, or
                             found from the working directory upwards).

A scale maps to a config variant (`SCALES`): "tiny" -> "" (each family's default, the tiny model)
and "test" -> "test".
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Optional

import ml_collections

from rlhf_jax.config import families

SCALE_ENV = "RLHF_JAX_NOTEBOOK_SCALE"
WORKDIR_ENV = "RLHF_JAX_NOTEBOOK_WORKDIR"
CONFIGS_ENV = "RLHF_JAX_CONFIGS_DIR"
SCALES = {"tiny": "", "test": "test"}  # notebook scale -> config variant
DEFAULT_WORKDIR = pathlib.Path("runs") / "notebooks"


def notebook_scale(default: str = "tiny") -> str:
  """The scale named by $RLHF_JAX_NOTEBOOK_SCALE (or `default`); raises naming the variable."""
  scale = os.environ.get(SCALE_ENV, "").strip() or default
  if scale not in SCALES:
    raise ValueError(f"{SCALE_ENV}={scale!r} is not a notebook scale; use one of {sorted(SCALES)}")
  return scale


def _candidates() -> list[pathlib.Path]:
  if os.environ.get(CONFIGS_ENV):
    return [pathlib.Path(os.environ[CONFIGS_ENV])]
  package_dir = pathlib.Path(__file__).resolve().parent.parent  # .../rlhf_jax
  cwd = pathlib.Path.cwd().resolve()
  # A source checkout or an editable install first, then the working directory and its parents.
  return [package_dir.parent / "configs"] + [d / "configs" for d in (cwd, *cwd.parents)]


def configs_dir() -> pathlib.Path:
  """The repo's configs/ directory (module docstring for the search order).

  Raises:
    FileNotFoundError listing the places searched (a pip install without the source tree has no
    configs/: clone the repository, or set RLHF_JAX_CONFIGS_DIR).
  """
  searched = _candidates()
  for d in searched:
    if (d / "sft.py").is_file():
      return d
  raise FileNotFoundError(f"no configs/ directory with sft.py found (searched {[str(d) for d in searched]}); "
                          f"run from a checkout of the repository or set {CONFIGS_ENV}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Optional[Mapping[str, Any]]
                    ) -> ml_collections.ConfigDict:
  """Sets dotted fields in place (`{"train.total_steps": 4}`), like `--config.train.total_steps=4`.

  Raises:
    KeyError naming the first dotted field that the config does not have.
  """
  for dotted, value in (overrides or {}).items():
    *parents, leaf = dotted.split(".")
    section = config
    for i, name in enumerate(parents):
      if not isinstance(section, ml_collections.ConfigDict) or name not in section:
        raise KeyError(f"config override {dotted!r}: no section {'.'.join(parents[:i + 1])!r}")
      section = section[name]
    if not isinstance(section, ml_collections.ConfigDict) or leaf not in section:
      raise KeyError(f"config override {dotted!r}: no field {leaf!r} in "
                     f"{'.'.join(parents) or 'the top level'} (known: {sorted(section.keys())})")
    section[leaf] = value
  return config


def load_config(family: str, scale: str, overrides: Optional[Mapping[str, Any]] = None
                ) -> ml_collections.ConfigDict:
  """configs/<family>.py at the variant of `scale` (`SCALES`), with dotted `overrides` applied.

  Example: load_config("sft", "test", {"train.total_steps": 8}).
  """
  if scale not in SCALES:
    raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
  path = configs_dir() / f"{family}.py"
  if not path.is_file():
    known = sorted(p.stem for p in families.config_files(path.parent))
    raise FileNotFoundError(f"no config family {family!r} ({path}); known: {known}")
  module = families.load_module(path)
  variant = SCALES[scale]
  config = module.get_config(variant) if variant else module.get_config()
  return apply_overrides(config, overrides)


def notebook_workdir(name: str, scale: str, root: Optional[str | os.PathLike] = None) -> pathlib.Path:
  """`<root>/<name>_<scale>` (root: `root`, $RLHF_JAX_NOTEBOOK_WORKDIR or ./runs/notebooks), created.

  Stages run in sub-directories of it, so their shared artifact registry is `<it>/artifacts`
  (the trainers' default `<stage workdir>/../artifacts`). Re-running a notebook resumes each
  trainer from its checkpoints; the scale is in the name so two scales never share checkpoints.
  """
  if scale not in SCALES:
    raise ValueError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
  base = pathlib.Path(root or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR)
  path = (base / f"{name}_{scale}").absolute()
  path.mkdir(parents=True, exist_ok=True)
  return path
