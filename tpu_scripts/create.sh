#!/usr/bin/env bash
# Creates a Cloud TPU VM (single host or pod slice).
source "$(dirname "$0")/common.sh"
run gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" \
  --accelerator-type "$ACCELERATOR" --version "$VERSION"
