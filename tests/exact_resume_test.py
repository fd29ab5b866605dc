"""Exact resume: a run SIGKILLed mid-step or mid-save and restarted ends bitwise equal to a clean run.

Every run is a real subprocess of tests/testdata/toy_train.py on one CPU device (12 AdamW steps with
2 micro-batches, a checkpoint every 3 steps).
"""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rlhf_jax.checkpointing import CheckpointManager

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "testdata" / "toy_train.py"
TOTAL_STEPS = 12
COMMON_ARGS = ("--total_steps", str(TOTAL_STEPS), "--checkpoint_every", "3")


def _env() -> dict:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("RLHF_JAX_TEST_CACHE", str(ROOT / ".jax_cache"))  # as tests/conftest.py
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  env.pop("XLA_FLAGS", None)
  return env


def _start(workdir: pathlib.Path, *extra: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, str(SCRIPT), "--workdir", str(workdir), *COMMON_ARGS,
                           *extra], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _run(workdir: pathlib.Path, *extra: str) -> str:
  proc = _start(workdir, *extra)
  _, err = proc.communicate(timeout=180)
  assert proc.returncode == 0, f"toy run failed:\n{err[-4000:]}"
  return err


def _kill(proc: subprocess.Popen) -> str:
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  _, err = proc.communicate(timeout=30)
  assert proc.returncode == -signal.SIGKILL
  return err


def _wait_until(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f"run exited early ({proc.returncode}):\n{proc.stderr.read()[-4000:]}")
    if time.monotonic() > deadline:
      proc.kill()
      raise AssertionError("timed out waiting for the run")
    time.sleep(0.01)


def _logged_steps(workdir: pathlib.Path) -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  steps = []
  for line in path.read_text().splitlines():
    try:
      steps.append(json.loads(line)["step"])
    except (ValueError, KeyError):
      pass  # a line being written right now
  return steps


def _committed(workdir: pathlib.Path, step: int) -> bool:
  """The step's save was renamed from its temporary name and carries Orbax's commit marker."""
  return (workdir / "checkpoints" / str(step) / "commit_success.txt").exists()


def _params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(workdir / "final_params.npz") as f:
    return {k: f[k] for k in f.files}


def _final_hash(workdir: pathlib.Path) -> str:
  with CheckpointManager(workdir / "checkpoints", async_save=False) as manager:
    assert manager.latest_step() == TOTAL_STEPS
    return manager.read_metadata(TOTAL_STEPS)["content_hash"]


def _assert_bitwise_equal(resumed: pathlib.Path, reference: pathlib.Path) -> None:
  got, want = _params(resumed), _params(reference)
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
    assert np.array_equal(got[name], want[name]), f"{name} differs after resume"
  assert _final_hash(resumed) == _final_hash(reference)
  # The metrics log was rewound to the checkpoint: every step appears exactly once.
  assert _logged_steps(resumed) == list(range(1, TOTAL_STEPS + 1))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("uninterrupted")
  _run(workdir)
  return workdir


def test_sigkill_mid_step_then_resume_is_bitwise_equal(tmp_path, reference_run):
  proc = _start(tmp_path, "--step_sleep", "0.05")
  # Past step 4 AND the asynchronous step-3 save committed (under load the commit can lag the
  # steps), so the restart has a complete checkpoint to resume from.
  _wait_until(lambda: len(_logged_steps(tmp_path)) >= 4 and _committed(tmp_path, 3), proc)
  delay = random.uniform(0.0, 0.2)
  print(f"killing {delay:.3f} s after step 4 was logged")
  time.sleep(delay)
  _kill(proc)
  assert not (tmp_path / "final_params.npz").exists()
  err = _run(tmp_path)
  assert "Resumed from checkpoint step" in err, err[-3000:]
  _assert_bitwise_equal(tmp_path, reference_run)


def test_sigkill_mid_save_skips_partial_checkpoint(tmp_path, reference_run):
  proc = _start(tmp_path, "--slow_save_step", "6")
  _wait_until(lambda: (tmp_path / "in_save_6").exists(), proc)
  _kill(proc)
  checkpoints = tmp_path / "checkpoints"
  names = sorted(p.name for p in checkpoints.iterdir())
  assert "3" in names and "6" not in names, names
  assert any(n.startswith("6") and "orbax-checkpoint-tmp" in n for n in names), names

  err = _run(tmp_path)
  assert "Partial checkpoint" in err and "6.orbax-checkpoint-tmp" in err, err[-3000:]
  assert "Resumed from checkpoint step 3" in err, err[-3000:]
  assert not any("orbax-checkpoint-tmp" in p.name for p in checkpoints.iterdir())
  _assert_bitwise_equal(tmp_path, reference_run)
