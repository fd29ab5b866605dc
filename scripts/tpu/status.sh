#!/usr/bin/env bash
# Shows a run's progress: the last lines of every worker's log in the bucket, their exit codes,
# and whether the entry point is still running on each worker.
#
#   scripts/tpu/status.sh NAME WORKDIR RUN_ID [LINES]
#
# Environment: ZONE, PROJECT, DRY_RUN=1 (see common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -ge 3 && $# -le 4 ]] || die "usage: $0 NAME WORKDIR RUN_ID [LINES]"
NAME="$1"
WORKDIR="${2%/}"
RUN_ID="$3"
LINES="${4:-5}"
require_bucket_path "${WORKDIR}"
LOGS="${WORKDIR}/logs/${RUN_ID}"

if [[ "${DRY_RUN}" == 1 ]]; then
  run gcloud storage ls "${LOGS}/"
else
  for log in $(gcloud storage ls "${LOGS}/worker-*.log" 2>/dev/null); do
    echo "== ${log}"
    gcloud storage cat "${log}" | tail -n "${LINES}"
    gcloud storage cat "${log%.log}.exit_code" 2>/dev/null | sed 's/^/exit code: /' || echo "(running)"
  done
fi
# "[w]orker_run.sh" matches the job but not the ssh shell whose command line holds this pattern.
on_all_workers "${NAME}" "pgrep -f '[w]orker_run.sh $(quote "${RUN_ID}")' > /dev/null && echo \"\$(hostname): running\" || echo \"\$(hostname): not running\""
