#!/usr/bin/env bash
# Creates a TPU VM (one host or a multi-host pod slice).
#
#   scripts/tpu/create.sh NAME ACCELERATOR_TYPE [RUNTIME_VERSION]
#   scripts/tpu/create.sh rlhf-v4 v4-32                      # 16 chips on 4 hosts
#   ZONE=us-west4-a scripts/tpu/create.sh rlhf-v5e v5litepod-256
#
# RUNTIME_VERSION (the TPU VM software image, gcloud --version) defaults by accelerator family:
# v4 and older tpu-ubuntu2204-base, v5e (v5litepod-*) v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
# v6e v2-alpha-tpuv6e. Environment: ZONE, PROJECT, SPOT=1 (cheaper, pre-emptible capacity),
# DRY_RUN=1 (see common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -ge 2 && $# -le 3 ]] || die "usage: $0 NAME ACCELERATOR_TYPE [RUNTIME_VERSION]"
NAME="$1"
ACCELERATOR_TYPE="$2"
default_runtime() {
  case "$1" in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "no default runtime version for accelerator type '$1'; pass RUNTIME_VERSION" ;;
  esac
}
RUNTIME_VERSION="${3:-$(default_runtime "${ACCELERATOR_TYPE}")}"

mapfile -t FLAGS < <(tpu_flags)
if [[ "${SPOT:-0}" == 1 ]]; then
  FLAGS+=(--spot)
fi
run gcloud compute tpus tpu-vm create "${NAME}" "${FLAGS[@]}" \
  --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}"
