#!/usr/bin/env bash
# A whole batch job: create a TPU VM, install the project, run a config to completion on every
# worker, and delete the TPU VM again (also when a step fails or the script is interrupted).
#
#   scripts/tpu/batch.sh ACCELERATOR_TYPE ENTRY_POINT CONFIG WORKDIR [FLAGS...]
#   scripts/tpu/batch.sh v4-32 experiments/train_sft.py configs/sft.py:pod_v4_32 gs://my-bucket/runs/sft-v4
#
# Environment: NAME (default rlhf-jax-<timestamp>), RUNTIME_VERSION, KEEP=1 (do not delete the TPU
# VM at the end), and everything create.sh / install.sh / launch.sh read.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -ge 4 ]] || die "usage: $0 ACCELERATOR_TYPE ENTRY_POINT CONFIG WORKDIR [FLAGS...]"
ACCELERATOR_TYPE="$1"
shift
NAME="${NAME:-rlhf-jax-$(date -u +%Y%m%d-%H%M%S)}"
require_bucket_path "${3%/}"

cleanup() {
  if [[ "${KEEP:-0}" != 1 ]]; then
    "${SCRIPTS_DIR}/teardown.sh" "${NAME}"
  fi
}
trap cleanup EXIT

"${SCRIPTS_DIR}/create.sh" "${NAME}" "${ACCELERATOR_TYPE}" ${RUNTIME_VERSION:+"${RUNTIME_VERSION}"}
"${SCRIPTS_DIR}/install.sh" "${NAME}"
WAIT=1 "${SCRIPTS_DIR}/launch.sh" "${NAME}" "$@"
