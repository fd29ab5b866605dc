#!/usr/bin/env bash
# Installs the project on every worker of a TPU VM: clone (or update) the repository at REF, make a
# Python PYTHON_VERSION virtual environment with uv (TPU VM images ship Python 3.10; JAX needs a
# newer one, which uv downloads), `pip install -e .` plus jax[tpu] at the same JAX version, gcsfs
# (epath's gs:// backend, used for workdirs in a bucket) and google-cloud-storage (TensorBoard event
# files in a bucket), then print each worker's TPU devices as a check.
#
#   scripts/tpu/install.sh NAME
#   REF=my-branch scripts/tpu/install.sh rlhf-v4
#
# Environment: REPO_URL, REF (default: this checkout's HEAD commit, so push it first),
# PYTHON_VERSION (default 3.11), REMOTE_DIR, VENV, ZONE, PROJECT, DRY_RUN=1 (see common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -eq 1 ]] || die "usage: $0 NAME"
NAME="$1"
REPO_URL="${REPO_URL:-$(git -C "${REPO_ROOT}" remote get-url origin 2>/dev/null || true)}"
[[ -n "${REPO_URL}" ]] || die "set REPO_URL (this checkout has no 'origin' remote to clone from)"
REF="${REF:-$(git -C "${REPO_ROOT}" rev-parse HEAD)}"
if [[ -n "$(git -C "${REPO_ROOT}" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  echo "warning: this checkout has uncommitted changes; workers get ${REF} from ${REPO_URL}" >&2
fi

read -r -d '' WORKER_SCRIPT <<SCRIPT || true
set -euo pipefail
if [ -d ${REMOTE_DIR}/.git ]; then
  git -C ${REMOTE_DIR} fetch --quiet --tags origin
else
  git clone --quiet $(quote "${REPO_URL}") ${REMOTE_DIR}
fi
git -C ${REMOTE_DIR} checkout --quiet $(quote "${REF}")
python3 -m pip install --quiet --user --upgrade uv
~/.local/bin/uv venv --quiet --allow-existing --python ${PYTHON_VERSION:-3.11} ${VENV}
. ${VENV}/bin/activate
~/.local/bin/uv pip install --quiet -e ${REMOTE_DIR}
JAX_VERSION=\$(python -c 'import jax; print(jax.__version__)')
~/.local/bin/uv pip install --quiet "jax[tpu]==\${JAX_VERSION}" gcsfs google-cloud-storage
python -c 'import jax, socket; print(socket.gethostname(), ":", jax.local_device_count(), jax.devices()[0].device_kind, "devices")'
SCRIPT

on_all_workers "${NAME}" "${WORKER_SCRIPT}"
