"""Every configs/*.py loads, follows the convention, validates, and its "test" variant trains a step.

Files are discovered from configs/ (rlhf_jax.config.families; the convention is in
rlhf_jax/config/__init__.py). A file that does not declare TRAINER fails with a message naming it;
configs that do not train (TRAINER = None) are loaded and their training checks are skipped with
that reason. Bad command-line overrides are parsed with ml_collections' config_flags, the
machinery of every experiments/*.py entry point, and must fail naming the field.
"""
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from rlhf_jax.config import families

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
FILES = families.config_files(CONFIGS)
IDS = [p.stem for p in FILES]


def _training_family(path: pathlib.Path) -> families.Family:
  try:
    family = families.load_family(path)
  except families.ConventionError as e:  # reported once, by test_config_loads_and_follows_the_convention
    pytest.skip(f"convention failure (see test_config_loads_and_follows_the_convention): {e}")
  if not family.trains:
    pytest.skip(f"{path.name} sets TRAINER = None: it does not train")
  return family


def _one_step(config: ml_collections.ConfigDict) -> bool:
  """Sets train.total_steps = 1 in every (nested) section that has it; False if none has.

  The optimizer's decay horizon is left alone (a longer horizon than the run is valid).
  """
  found = False
  for section in _sections(config):
    train = section.get("train")
    if isinstance(train, ml_collections.ConfigDict) and "total_steps" in train:
      train.total_steps = 1
      found = True
  return found


def _sections(config: ml_collections.ConfigDict):
  yield config
  for key in config.keys():
    if isinstance(config[key], ml_collections.ConfigDict):
      yield from _sections(config[key])


def _parse(path: pathlib.Path, *overrides: str) -> ml_collections.ConfigDict:
  """What `--config=<path>:test <overrides>` gives an entry point (config_flags, locked)."""
  argv = ["prog", f"--config={path}:test", *overrides]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", str(path), "config", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_config_loads_and_follows_the_convention(path):
  family = families.load_family(path)  # ConventionError names the file and what is missing
  config = family.get_config()
  assert isinstance(config, ml_collections.ConfigDict) and config.keys()
  if not family.trains:
    return
  assert {"", "test"} <= set(family.variants), f"{path.name}: VARIANTS must include '' and 'test'"
  family.trainer()  # TRAINER resolves to a function
  validate = family.validator()
  for variant in family.variants:
    assert isinstance(family.get_config(variant), ml_collections.ConfigDict)
  with pytest.raises(ValueError, match="no_such_variant"):
    family.get_config("no_such_variant")
  for cfg in (config, family.get_config("test")):
    _fill_requires(cfg, family, "upstream@000000000000")  # real ids arrive at run time (see _Runs)
    validate(cfg, num_devices=jax.device_count(), num_processes=1)


def _fill_requires(config: ml_collections.ConfigDict, family: families.Family, value: str) -> None:
  for field in family.requires:
    *parents, leaf = field.split(".")
    section = config
    for name in parents:
      section = section[name]
    section[leaf] = value


class _Runs:
  """Runs "test" variants as sibling stages of one directory (one artifact registry), each once,
  upstream families first (REQUIRES), like the main pipeline does."""

  def __init__(self, base: pathlib.Path):
    self.base = base
    self.done: dict[str, tuple[dict, pathlib.Path, bool]] = {}

  def run(self, family: families.Family, chain: tuple[str, ...] = ()) -> tuple[dict, pathlib.Path, bool]:
    if family.name in self.done:
      return self.done[family.name]
    assert family.name not in chain, f"REQUIRES cycle: {' -> '.join(chain + (family.name,))}"
    config = family.get_config("test")
    for field, upstream_name in family.requires.items():
      upstream = families.load_family(CONFIGS / f"{upstream_name}.py")
      summary, _, _ = self.run(upstream, chain + (family.name,))
      assert "artifact_id" in summary, f"{upstream.trainer_spec} returned no artifact_id for {family.name}.{field}"
      *parents, leaf = field.split(".")
      section = config
      for name in parents:
        section = section[name]
      section[leaf] = summary["artifact_id"]
    trains = _one_step(config)  # families without train.total_steps (e.g. best-of-N) run as they are
    workdir = self.base / family.name
    self.done[family.name] = (family.trainer()(config, workdir), workdir, trains)
    return self.done[family.name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return _Runs(tmp_path_factory.mktemp("stages"))


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_test_variant_trains_one_step(path, runs):
  family = _training_family(path)
  summary, workdir, trains = runs.run(family)
  assert isinstance(summary, dict) and summary
  # A family's trainer writes <workdir>/metrics.jsonl; loops of trainers (rejection sampling) write one
  # per inner run below the workdir.
  found = sorted(workdir.rglob("metrics.jsonl"))
  if trains:
    assert found, f"{family.trainer_spec} wrote no metrics.jsonl under {workdir}"
    metrics = workdir / "metrics.jsonl" if (workdir / "metrics.jsonl").exists() else found[0]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert {r["step"] for r in records} == {1}, "the run must stop after train.total_steps = 1"
    losses = [v for r in records for k, v in r.items() if k.startswith("loss")]
    assert losses and all(v is not None and math.isfinite(v) for v in losses)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_bad_overrides_name_the_field(path):
  family = _training_family(path)
  validate = family.validator()
  assert _parse(path).mesh.data == family.get_config("test").mesh.data  # the override machinery works
  with pytest.raises(Exception, match="no_such_field"):
    _parse(path, "--config.mesh.no_such_field=3")
  with pytest.raises(ValueError, match=r"mesh(\.data=3|.*'data': 3)"):
    validate(_parse(path, "--config.mesh.data=3"), num_devices=8, num_processes=1)
  if "batch" in family.get_config("test") and "global_batch_size" in family.get_config("test").batch:
    with pytest.raises(ValueError, match=r"batch\.global_batch_size=7"):
      validate(_parse(path, "--config.batch.global_batch_size=7"), num_devices=8, num_processes=1)


def test_cli_reports_an_indivisible_batch(tmp_path):
  """The real entry point on 8 devices: `--config.batch.global_batch_size=7` exits naming the field."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", RLHF_JAX_COMPILATION_CACHE="")
  result = subprocess.run([sys.executable, "experiments/train_sft.py", "--config=configs/sft.py:test",
                           f"--workdir={tmp_path / 'sft'}", "--config.batch.global_batch_size=7"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "batch.global_batch_size=7" in result.stderr and "data-parallel" in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "sft").exists()  # validation runs before anything is written
