#!/usr/bin/env bash
# Deletes a TPU VM (all its workers). Outputs in the bucket are kept.
#
#   scripts/tpu/teardown.sh NAME
#
# Environment: ZONE, PROJECT, DRY_RUN=1 (see common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ $# -eq 1 ]] || die "usage: $0 NAME"
mapfile -t FLAGS < <(tpu_flags)
run gcloud compute tpus tpu-vm delete "$1" "${FLAGS[@]}" --quiet
