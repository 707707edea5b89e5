#!/usr/bin/env bash
# Shared argument parsing for the Cloud TPU VM scripts. Every command goes through `run`, which prints it
# and, unless --dry-run is given, executes it.
set -euo pipefail

NAME="${TPU_NAME:-slas-jax}"
ZONE="${TPU_ZONE:-us-central2-b}"
ACCELERATOR="${TPU_ACCELERATOR:-v4-32}"
VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
PROJECT="${TPU_PROJECT:-}"
DRY_RUN=0
REMOTE_DIR="slas-jax"
EXTRA=()

usage() {
  cat <<USAGE
usage: $(basename "$0") [--name N] [--zone Z] [--accelerator A] [--version V] [--project P] [--dry-run] [-- ARGS]
  Environment defaults: TPU_NAME, TPU_ZONE, TPU_ACCELERATOR, TPU_VERSION, TPU_PROJECT.
  Arguments after -- go to the remote command (launch.sh: to python -m slas_jax.train).
USAGE
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

PROJECT_FLAG=()
[[ -n "$PROJECT" ]] && PROJECT_FLAG=(--project "$PROJECT")

run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ "$DRY_RUN" -eq 0 ]]; then
    "$@"
  fi
}

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all --command "$1"
}
