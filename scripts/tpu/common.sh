# Shared settings and helpers of scripts/tpu/*.sh. Sourced by them, not run on its own.
#
# Settings (environment variables; every script documents the ones it reads):
#   ZONE        Cloud TPU zone (default us-central2-b, where v4 lives; v5e: e.g. us-west4-a)
#   PROJECT     Google Cloud project; default: gcloud's configured project
#   REPO_URL    git URL the workers clone; default: this checkout's `origin` remote
#   REF         commit / branch / tag the workers check out; default: this checkout's HEAD
#   REMOTE_DIR  checkout directory on every worker (default ~/rlhf_jax)
#   VENV        virtual environment on every worker (default ~/rlhf_jax_venv)
#   DRY_RUN=1   print every gcloud command instead of running it (nothing is created or changed)

set -euo pipefail

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPTS_DIR}/../.." && pwd)"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"
REMOTE_DIR="${REMOTE_DIR:-~/rlhf_jax}"
VENV="${VENV:-~/rlhf_jax_venv}"
DRY_RUN="${DRY_RUN:-0}"

die() {
  echo "error: $*" >&2
  exit 1
}

# run CMD ARGS...: runs a command, or prints it (shell-quoted, prefixed with "+") when DRY_RUN=1.
run() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# The --zone / --project flags of every `gcloud compute tpus tpu-vm` command.
tpu_flags() {
  printf -- '--zone=%s\n' "${ZONE}"
  if [[ -n "${PROJECT}" ]]; then
    printf -- '--project=%s\n' "${PROJECT}"
  fi
}

# on_all_workers NAME COMMAND: runs a shell command on every worker (host) of TPU VM NAME.
on_all_workers() {
  local name="$1" command="$2"
  local flags
  mapfile -t flags < <(tpu_flags)
  run gcloud compute tpus tpu-vm ssh "${name}" "${flags[@]}" --worker=all --command="${command}"
}

# require_bucket_path PATH: workers share nothing but the bucket, so run outputs must live there.
require_bucket_path() {
  [[ "$1" == gs://* ]] || die "'$1' is not a bucket path: every worker must see the workdir, use gs://BUCKET/..."
}

# quote ARGS...: the arguments as one shell-quoted string (for commands run through ssh).
quote() {
  local out="" arg
  for arg in "$@"; do
    out+="$(printf ' %q' "${arg}")"
  done
  printf '%s' "${out# }"
}
