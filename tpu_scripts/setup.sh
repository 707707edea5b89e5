#!/usr/bin/env bash
# Copies this checkout to every worker of the TPU VM and installs it with the TPU build of JAX.
USAGE="[common flags]"
ABOUT="Copies this checkout to ~/slas-jax on every worker and installs it with pip install -e '.[tpu]'."
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_args "$@"
ROOT="$(cd "$SCRIPTS_DIR/.." && pwd)"
run gcloud compute tpus tpu-vm scp --recurse "$ROOT" "$NAME:~/$REMOTE_DIR" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all
on_all_workers "cd ~/$REMOTE_DIR && python3 -m pip install -U pip && python3 -m pip install -e '.[tpu]'"
