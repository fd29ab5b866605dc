#!/usr/bin/env bash
# Launches a config on every worker of a TPU VM, with checkpoints, metrics and logs in a bucket.
#
#   scripts/tpu/launch.sh NAME ENTRY_POINT CONFIG WORKDIR [FLAGS...]
#   scripts/tpu/launch.sh rlhf-v4 experiments/train_sft.py configs/sft.py:pod_v4_32 \
#       gs://my-bucket/runs/sft-v4 --config.train.total_steps=2000
#
# Steps: (1) validate the config's mesh and batch arithmetic for its pod here, on CPU
# (`python -m rlhf_jax.config.pods`, pod_* variants only; SKIP_VALIDATE=1 skips it); (2) start
# scripts/tpu/worker_run.sh detached on every worker, which runs the entry point with
# RLHF_JAX_DISTRIBUTED=1 and copies its log to WORKDIR/logs/RUN_ID/worker-<i>.log; (3) with WAIT=1,
# poll the bucket until every worker has written its exit code and exit with the worst one.
#
# Environment: RUN_ID (default: UTC timestamp), WAIT=1, POLL_S (default 60), SKIP_VALIDATE=1,
# REMOTE_DIR, VENV, ZONE, PROJECT, DRY_RUN=1 (see common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -ge 4 ]] || die "usage: $0 NAME ENTRY_POINT CONFIG WORKDIR [FLAGS...]"
NAME="$1"
ENTRY_POINT="$2"
CONFIG="$3"
WORKDIR="${4%/}"
shift 4
require_bucket_path "${WORKDIR}"
[[ -f "${REPO_ROOT}/${ENTRY_POINT}" ]] || die "no entry point ${ENTRY_POINT} in ${REPO_ROOT}"
[[ -f "${REPO_ROOT}/${CONFIG%%:*}" ]] || die "no config file ${CONFIG%%:*} in ${REPO_ROOT}"
RUN_ID="${RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}"

if [[ "${CONFIG}" == *:pod_* && "${SKIP_VALIDATE:-0}" != 1 ]]; then
  (cd "${REPO_ROOT}" && python3 -m rlhf_jax.config.pods "${CONFIG}") \
    || die "${CONFIG} does not validate for its pod (SKIP_VALIDATE=1 to launch anyway)"
fi

COMMAND="cd ${REMOTE_DIR} && VENV=${VENV} nohup setsid bash scripts/tpu/worker_run.sh $(quote "${RUN_ID}" \
"${WORKDIR}" "${ENTRY_POINT}" "${CONFIG}" "$@") > /dev/null 2>&1 < /dev/null & echo \"\$(hostname): started\""
on_all_workers "${NAME}" "${COMMAND}"
echo "run ${RUN_ID}: logs in ${WORKDIR}/logs/${RUN_ID}/ (scripts/tpu/status.sh ${NAME} ${WORKDIR} ${RUN_ID})"

if [[ "${WAIT:-0}" == 1 && "${DRY_RUN}" != 1 ]]; then
  mapfile -t FLAGS < <(tpu_flags)
  WORKERS="$(gcloud compute tpus tpu-vm describe "${NAME}" "${FLAGS[@]}" \
    --format='value(networkEndpoints[].ipAddress)' | tr ';,' '\n\n' | grep -c .)"
  echo "waiting for ${WORKERS} workers to finish"
  while true; do
    CODES="$(gcloud storage cat "${WORKDIR}/logs/${RUN_ID}/worker-*.exit_code" 2>/dev/null || true)"
    if [[ "$(grep -c . <<< "${CODES}")" -ge "${WORKERS}" ]]; then
      break
    fi
    sleep "${POLL_S:-60}"
  done
  WORST="$(sort -n <<< "${CODES}" | tail -n 1)"
  echo "all workers finished; worst exit code ${WORST}"
  exit "${WORST}"
fi
