#!/usr/bin/env bash
# Starts training on every worker at once (multi-host JAX: each worker joins with --multihost), after the
# preflight has checked the config against the slice on this machine.
# Example: tpu_scripts/launch.sh --name my-pod --accelerator v4-32 -- --config configs/sd_tpu.py
USAGE="[--run R] [--skip-preflight] [common flags] -- TRAIN_ARGS (--config configs/X.py [--config.a.b=v ...])"
ABOUT="Runs the preflight, then python -m slas_jax.train --multihost TRAIN_ARGS on every worker, in the background."
FLAGS_HELP="  --run R           the run's name: its log is ~/slas_jax_logs/R.log on each worker (default: UTC time)
  --skip-preflight  launch without checking the config against the slice (preflight.sh)"
RUN="$(date -u +%Y%m%d-%H%M%S)"
SKIP_PREFLIGHT=0
script_flag() {
  case "$1" in
    --run) need_value "$@"; need_run_name "$1" "$2"; RUN="$2"; CONSUMED=2 ;;
    --skip-preflight) SKIP_PREFLIGHT=1; CONSUMED=1 ;;
    *) return 1 ;;
  esac
}
TRAIN_ARGS=1
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_args "$@"
if [[ "$SKIP_PREFLIGHT" -eq 0 ]]; then
  preflight "${EXTRA[@]}"
fi
ARGS="$(printf ' %q' "${EXTRA[@]}")"
# One trainer per worker: a second would find the TPU busy. The log is appended to, so that resuming a run
# under its name keeps its history; PYTHONUNBUFFERED keeps the log current.
# shellcheck disable=SC2016  # expands on the worker
START="$(printf 'new=%s; if alive; then echo "worker $w: run $run is still training (pid $pid); stop it first (stop.sh)"; exit 1; fi; cd ~/%s || exit 1; mkdir -p "$d"; PYTHONUNBUFFERED=1 nohup python3 -m slas_jax.train --multihost%s >> "$d/$new.log" 2>&1 < /dev/null & echo $! > "$d/$new.pid"; echo "$new" > "$d/latest"; echo "worker $w: started run $new (pid $!), log $d/$new.log"' "$RUN" "$REMOTE_DIR" "$ARGS")"
on_all_workers "$(remote_prelude "")$START"
