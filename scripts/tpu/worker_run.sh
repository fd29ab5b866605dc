#!/usr/bin/env bash
# Runs ONE worker's share of a job; started on every worker by launch.sh (not by hand).
#
#   scripts/tpu/worker_run.sh RUN_ID WORKDIR ENTRY_POINT CONFIG [FLAGS...]
#
# Finds this worker's index in the TPU VM metadata, runs
#   RLHF_JAX_DISTRIBUTED=1 python ENTRY_POINT --config=CONFIG --workdir=WORKDIR FLAGS...
# (jax.distributed.initialize() then discovers the pod from the same metadata), and copies its
# stdout+stderr to WORKDIR/logs/RUN_ID/worker-<index>.log every LOG_UPLOAD_S seconds (default 60)
# and at the end, followed by WORKDIR/logs/RUN_ID/worker-<index>.exit_code.
set -uo pipefail

[[ $# -ge 4 ]] || { echo "usage: $0 RUN_ID WORKDIR ENTRY_POINT CONFIG [FLAGS...]" >&2; exit 2; }
RUN_ID="$1"
WORKDIR="$2"
ENTRY_POINT="$3"
CONFIG="$4"
shift 4
VENV="${VENV:-${HOME}/rlhf_jax_venv}"
METADATA="http://metadata.google.internal/computeMetadata/v1/instance/attributes"
WORKER="${WORKER:-$(curl -sf -H 'Metadata-Flavor: Google' "${METADATA}/agent-worker-number" || echo 0)}"
LOG="/tmp/rlhf_jax_${RUN_ID}_worker${WORKER}.log"
DEST="${WORKDIR}/logs/${RUN_ID}/worker-${WORKER}"

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
# shellcheck disable=SC1091
source "${VENV}/bin/activate"
export RLHF_JAX_DISTRIBUTED=1

echo "worker ${WORKER} on $(hostname): python ${ENTRY_POINT} --config=${CONFIG} --workdir=${WORKDIR} $*" > "${LOG}"
python "${ENTRY_POINT}" --config="${CONFIG}" --workdir="${WORKDIR}" "$@" >> "${LOG}" 2>&1 &
PID=$!
while kill -0 "${PID}" 2>/dev/null; do
  gcloud storage cp --quiet "${LOG}" "${DEST}.log" > /dev/null 2>&1 || true
  for _ in $(seq "${LOG_UPLOAD_S:-60}"); do
    kill -0 "${PID}" 2>/dev/null || break
    sleep 1
  done
done
wait "${PID}"
CODE=$?
echo "exit code ${CODE}" >> "${LOG}"
gcloud storage cp --quiet "${LOG}" "${DEST}.log"
echo "${CODE}" > "${LOG}.exit_code"
gcloud storage cp --quiet "${LOG}.exit_code" "${DEST}.exit_code"
exit "${CODE}"
