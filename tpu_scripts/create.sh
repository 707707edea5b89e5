#!/usr/bin/env bash
# Creates a Cloud TPU VM (single host or pod slice) at once; when capacity is short, queued.sh create waits
# in Cloud TPU's queue instead.
USAGE="[common flags]"
ABOUT="Creates the TPU VM --name of type --accelerator (gcloud compute tpus tpu-vm create)."
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_args "$@"
tpus tpu-vm create "$NAME" --accelerator-type "$ACCELERATOR" --version "$VERSION"
