#!/usr/bin/env bash
# Deletes the TPU VM: its disks, logs and any checkpoint kept on them go with it (a run's output_dir should be
# a gs:// bucket or copied off first). A TPU VM made by queued.sh create is deleted with queued.sh delete.
USAGE="[--yes] [common flags]"
ABOUT="Deletes the TPU VM --name (gcloud compute tpus tpu-vm delete); asks first, or refuses without a terminal, unless --yes."
FLAGS_HELP="  --yes  delete without asking"
YES=0
script_flag() {
  case "$1" in
    --yes) YES=1; CONSUMED=1 ;;
    *) return 1 ;;
  esac
}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_args "$@"
confirm "TPU VM $NAME in $ZONE"
# --quiet: the question was asked above; gcloud's own prompt would ask again.
tpus tpu-vm delete "$NAME" --quiet
