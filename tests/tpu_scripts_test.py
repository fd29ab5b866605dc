"""scripts/tpu/*.sh: the gcloud commands they issue (DRY_RUN=1) and a worker's run, on a fake gcloud.

No test here may reach Google Cloud: `gcloud` on PATH is a stub that either fails loudly (dry runs
must not call it) or, for worker_run.sh, copies "bucket" objects into a local directory.
"""
import os
import pathlib
import stat
import subprocess
import sys


REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts" / "tpu"

FAILING_GCLOUD = "#!/bin/sh\necho \"gcloud must not run in a dry run: $*\" >&2\nexit 97\n"
# `gcloud storage cp SRC gs://DEST` -> copy to $FAKE_BUCKET/DEST; anything else fails.
COPYING_GCLOUD = """#!/bin/sh
if [ "$1 $2" = "storage cp" ]; then
  shift 2
  [ "$1" = "--quiet" ] && shift
  dest="$FAKE_BUCKET/${2#gs://}"
  mkdir -p "$(dirname "$dest")" && cp "$1" "$dest"
  exit $?
fi
echo "unexpected gcloud $*" >&2
exit 97
"""


def _stub(tmp_path: pathlib.Path, body: str) -> dict[str, str]:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(body)
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  venv_bin = pathlib.Path(sys.executable).parent  # python3 of the test run, for the local validation
  return {**{k: v for k, v in os.environ.items() if k not in ("ZONE", "PROJECT", "SPOT", "REF")},
          "PATH": f"{bin_dir}{os.pathsep}{venv_bin}{os.pathsep}{os.environ['PATH']}", "DRY_RUN": "1"}


def _run(script: str, *args: str, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
  result = subprocess.run(["bash", str(SCRIPTS / script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
  assert (result.returncode == 0) == ok, result.stdout + result.stderr
  return result


def test_scripts_parse():
  for script in SCRIPTS.glob("*.sh"):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_create_picks_the_runtime_version_for_the_accelerator(tmp_path):
  env = _stub(tmp_path, FAILING_GCLOUD)
  out = _run("create.sh", "rlhf-v4", "v4-32", env=env).stdout
  assert out.startswith("+ gcloud compute tpus tpu-vm create rlhf-v4 --zone=us-central2-b")
  assert "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base" in out
  out = _run("create.sh", "pod", "v5litepod-256", env={**env, "ZONE": "us-west4-a", "SPOT": "1",
                                                        "PROJECT": "my-project"}).stdout
  assert "--zone=us-west4-a --project=my-project --spot --accelerator-type=v5litepod-256" in out
  assert "--version=v2-alpha-tpuv5-lite" in out
  assert "--version=custom-image" in _run("create.sh", "x", "v4-8", "custom-image", env=env).stdout
  assert "pass RUNTIME_VERSION" in _run("create.sh", "x", "z9-8", env=env, ok=False).stderr


def test_install_clones_the_ref_and_installs_jax_tpu_on_every_worker(tmp_path):
  env = {**_stub(tmp_path, FAILING_GCLOUD), "REPO_URL": "https://example.com/rlhf_jax.git", "REF": "v1.2"}
  out = _run("install.sh", "rlhf-v4", env=env).stdout
  assert "tpu-vm ssh rlhf-v4 --zone=us-central2-b --worker=all" in out
  for piece in ("git clone --quiet https://example.com/rlhf_jax.git ~/rlhf_jax", "checkout --quiet v1.2",
                "uv pip install --quiet -e ~/rlhf_jax", "jax[tpu]==${JAX_VERSION}", "gcsfs google-cloud-storage"):
    assert piece in out, piece


def test_launch_validates_then_starts_every_worker_on_a_bucket_workdir(tmp_path):
  env = {**_stub(tmp_path, FAILING_GCLOUD), "RUN_ID": "run7"}
  result = _run("launch.sh", "rlhf-v4", "experiments/train_sft.py", "configs/sft.py:pod_v4_32",
                "gs://bucket/runs/sft/", "--config.train.total_steps=20", env=env)
  assert "configs/sft.py:pod_v4_32: OK on v4-32 (16 devices, 4 processes)" in result.stdout
  command = [l for l in result.stdout.splitlines() if l.startswith("+ gcloud")]
  assert len(command) == 1 and "--worker=all" in command[0]
  for piece in ("worker_run.sh\\ run7\\ gs://bucket/runs/sft\\ experiments/train_sft.py\\ configs/sft.py:pod_v4_32",
                "--config.train.total_steps=20", "nohup\\ setsid"):
    assert piece in command[0], piece
  assert "logs in gs://bucket/runs/sft/logs/run7/" in result.stdout
  assert "bucket path" in _run("launch.sh", "x", "experiments/train_sft.py", "configs/sft.py:pod_v4_32",
                               str(tmp_path), env=env, ok=False).stderr
  assert "no config file" in _run("launch.sh", "x", "experiments/train_sft.py", "configs/nope.py",
                                  "gs://b/r", env=env, ok=False).stderr


def test_batch_tears_down_even_when_a_step_fails(tmp_path):
  env = {**_stub(tmp_path, FAILING_GCLOUD), "NAME": "job1", "REPO_URL": "https://example.com/r.git"}
  out = _run("batch.sh", "v4-32", "experiments/train_sft.py", "configs/sft.py:pod_v4_32", "gs://b/r", env=env).stdout
  steps = [l.split()[5] for l in out.splitlines() if l.startswith("+ gcloud compute tpus tpu-vm")]
  assert steps == ["create", "ssh", "ssh", "delete"], out
  env.pop("DRY_RUN")  # now the (failing) stub really runs: create fails, and the VM is still deleted
  result = _run("batch.sh", "v4-32", "experiments/train_sft.py", "configs/sft.py:pod_v4_32", "gs://b/r",
                env=env, ok=False)
  assert "tpu-vm create job1" in result.stderr and "tpu-vm delete job1" in result.stderr


def test_worker_run_sets_up_distributed_and_uploads_its_log(tmp_path):
  env = _stub(tmp_path, COPYING_GCLOUD)
  env.pop("DRY_RUN")
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text("")  # the worker's venv is already on PATH here
  entry = tmp_path / "entry.py"
  entry.write_text("import os, sys\nprint('distributed', os.environ['RLHF_JAX_DISTRIBUTED'], *sys.argv[1:])\n"
                   "sys.exit(3)\n")
  bucket = tmp_path / "bucket"
  env.update(FAKE_BUCKET=str(bucket), VENV=str(venv), WORKER="2", LOG_UPLOAD_S="1")
  result = subprocess.run(["bash", str(SCRIPTS / "worker_run.sh"), "run9", "gs://b/runs/x", str(entry),
                           "configs/sft.py:pod_v4_32", "--config.seed=5"], env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 3, result.stderr
  log = (bucket / "b" / "runs" / "x" / "logs" / "run9" / "worker-2.log").read_text()
  assert ("distributed 1 --config=configs/sft.py:pod_v4_32 --workdir=gs://b/runs/x --config.seed=5" in log
          and log.rstrip().endswith("exit code 3")), log
  assert (bucket / "b" / "runs" / "x" / "logs" / "run9" / "worker-2.exit_code").read_text().strip() == "3"
