#!/usr/bin/env bash
# Starts training on every worker at once (multi-host JAX: each worker joins with --multihost).
# Example: tpu_scripts/launch.sh --name my-pod -- --config configs/sd_tpu.py --config.train.num_steps=300
source "$(dirname "$0")/common.sh"
if [[ ${#EXTRA[@]} -eq 0 ]]; then
  echo "error: pass the training arguments after --, e.g. -- --config configs/sd_tpu.py" >&2
  exit 2
fi
ARGS="$(printf ' %q' "${EXTRA[@]}")"
on_all_workers "cd ~/$REMOTE_DIR && nohup python3 -m slas_jax.train --multihost$ARGS > train.log 2>&1 &"
