"""Two JAX processes on 127.0.0.1 (two CPU devices each) train like one process with 4 devices.

Both runs go through the real entry point `experiments/train_sft.py` (so `experiment.start` and
its `jax.distributed.initialize` from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
are exercised) on the "test" config with a data 2 x fsdp 2 mesh over the 4 global devices. The
two-process run must give the same parameters, losses and evaluation as the single-process run,
write its checkpoint shards from both hosts, and write side files (metrics, TensorBoard events)
once, from process 0 only. The same holds for PPO (`experiments/train_ppo.py`), whose iteration
also samples rollouts on both hosts, scores them on the host and gathers per-host prompt slices.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 3
SFT_FLAGS = ["--config=configs/sft.py:test", "--config.mesh.data=2", "--config.mesh.fsdp=2",
             f"--config.train.total_steps={STEPS}", f"--config.optimizer.total_steps={STEPS}",
             "--config.checkpoint.every=0", "--config.train.eval_every=0",
             "--config.eval.num_sample_prompts=4", "--config.eval.max_new_tokens=4"]
PPO_ITERATIONS = 2
PPO_FLAGS = ["--config=configs/ppo.py:test", "--config.mesh.data=2", "--config.mesh.fsdp=2",
             f"--config.train.total_steps={PPO_ITERATIONS}", "--config.checkpoint.every=1"]
TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(local_devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_", "XLA_", "RLHF_JAX_DISTRIBUTED"))}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
             RLHF_JAX_COMPILATION_CACHE=str(jax.config.jax_compilation_cache_dir or ""),
             RLHF_JAX_COMPILATION_CACHE_MIN_SECS="0", **extra)
  return env


def _launch(script: str, flags: list[str], workdir: pathlib.Path, env: dict[str, str], log: pathlib.Path,
            *extra: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, script, f"--workdir={workdir}", *flags, *extra],
                          cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _run_two_and_one(tmp_path: pathlib.Path, script: str, flags: list[str], stage: str,
                     single_extra: tuple[str, ...] = ()) -> tuple[pathlib.Path, pathlib.Path]:
  """Runs `script` as two processes (2 devices each) and as one (4 devices); returns both workdirs."""
  port = _free_port()
  multi, single = tmp_path / "multi" / stage, tmp_path / "single" / stage
  logs = {name: tmp_path / f"{name}.log" for name in ("process0", "process1", "single")}
  procs = {f"process{i}": _launch(script, flags, multi, _env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                                             JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)),
                                  logs[f"process{i}"]) for i in range(2)}
  procs["single"] = _launch(script, flags, single, _env(4), logs["single"], *single_extra)
  _wait_all(procs, logs)
  assert "process 1/2, 2 local / 4 global devices" in logs["process1"].read_text()
  assert "process 0/1, 4 local / 4 global devices" in logs["single"].read_text()
  return multi, single


def _metrics(workdir: pathlib.Path) -> list[dict]:
  return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _wait_all(procs: dict[str, subprocess.Popen], logs: dict[str, pathlib.Path]) -> None:
  try:
    for name, proc in procs.items():
      proc.wait(timeout=TIMEOUT_S)
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  failed = {name: p.returncode for name, p in procs.items() if p.returncode != 0}
  if failed:
    tails = "\n".join(f"--- {name} (exit {procs[name].returncode}) ---\n" +
                      "\n".join(logs[name].read_text().splitlines()[-25:]) for name in failed)
    raise AssertionError(f"runs failed: {failed}\n{tails}")


def _load_exported(path: pathlib.Path):
  """Exported params restored onto this process's first device, whatever mesh saved them."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(path).item_metadata
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    return jax.tree.map(np.asarray, ckptr.restore(path, abstract))


def test_two_processes_train_like_one(tmp_path):
  # The reference skips sampling (its results are not compared: categorical draws may flip on
  # last-bit differences); it only has to produce the same parameters and losses.
  multi, single = _run_two_and_one(tmp_path, "experiments/train_sft.py", SFT_FLAGS, "sft",
                                   ("--config.eval.num_sample_prompts=0",))

  # Same parameters (collectives over gloo vs in-process reduce in another order: not bitwise).
  summary_m = json.loads((multi / "summary.json").read_text())
  summary_s = json.loads((single / "summary.json").read_text())
  params_m = _load_exported(multi / "export" / "sft_policy")
  params_s = _load_exported(single / "export" / "sft_policy")
  assert jax.tree.structure(params_m) == jax.tree.structure(params_s)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_m, params_s)

  # Same losses at every step and the same held-out loss.
  def losses(workdir):
    return [(r["step"], r["loss/nll"]) for r in _metrics(workdir) if "loss/nll" in r]
  steps_m, steps_s = losses(multi), losses(single)
  assert [s for s, _ in steps_m] == list(range(1, STEPS + 1))  # written once: process 0 only
  np.testing.assert_allclose([l for _, l in steps_m], [l for _, l in steps_s], rtol=1e-5)
  assert steps_m[-1][1] < steps_m[0][1]  # the parameters did train
  np.testing.assert_allclose(summary_m["final"]["eval/loss"], summary_s["final"]["eval/loss"], rtol=1e-5)
  assert summary_m["dataset_id"] == summary_s["dataset_id"]
  # Sampling ran on both hosts and was gathered (4 prompts, 4 tokens each at most).
  assert len(summary_m["examples"]) == 4 and 0 < summary_m["final"]["sample/length"] <= 4

  # Checkpoint written by both hosts; side files written once.
  state_dir = multi / "checkpoints" / str(STEPS) / "state"
  assert (state_dir / "commit_success.txt").exists()
  assert {p.name for p in state_dir.glob("ocdbt.process_*")} == {"ocdbt.process_0", "ocdbt.process_1"}
  assert len(list((multi / "tensorboard").glob("events.out.tfevents.*"))) == 1
  record = json.loads((tmp_path / "multi" / "artifacts" / f"{summary_m['artifact_id']}.json").read_text())
  assert record["params_path"] == str(multi / "export" / "sft_policy")


def test_two_processes_run_ppo_like_one(tmp_path):
  multi, single = _run_two_and_one(tmp_path, "experiments/train_ppo.py", PPO_FLAGS, "ppo")
  # Each host samples its half of the prompts; the rollouts, scores, KL and losses are those of the
  # single process (the sampled tokens agree: a flip would need two logits within ~1e-6).
  rows_m, rows_s = _metrics(multi), _metrics(single)
  assert [r["step"] for r in rows_m] == list(range(1, PPO_ITERATIONS + 1))  # written once
  for key in ("rollout/response_length", "reward/raw_score", "kl/ref", "loss/total", "loss/policy",
              "loss/value", "policy/first_ratio_mean"):
    np.testing.assert_allclose([r[key] for r in rows_m], [r[key] for r in rows_s], rtol=1e-4, atol=1e-6,
                               err_msg=key)
  params_m = _load_exported(multi / "export" / "ppo_policy")
  params_s = _load_exported(single / "export" / "ppo_policy")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params_m, params_s)
  # Checkpoints from both hosts; samples written once.
  state_dir = multi / "checkpoints" / str(PPO_ITERATIONS) / "state"
  assert {p.name for p in state_dir.glob("ocdbt.process_*")} == {"ocdbt.process_0", "ocdbt.process_1"}
  samples_m, samples_s = (
      [json.loads(l) for l in (w / "samples.jsonl").read_text().splitlines()] for w in (multi, single))
  assert [(x["prompt"], x["response"]) for x in samples_m] == [(x["prompt"], x["response"]) for x in samples_s]
  np.testing.assert_allclose([x["kl"] for x in samples_m], [x["kl"] for x in samples_s], rtol=1e-4, atol=1e-6)
