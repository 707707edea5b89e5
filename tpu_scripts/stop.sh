#!/usr/bin/env bash
# Stops a run the way a preemption would: SIGTERM to the trainer on every worker, which finishes the step in
# flight, saves a checkpoint and exits (launch.sh with the same --config resumes from it). --vm then stops
# the TPU VM, but only once every trainer has exited, so that no checkpoint is cut off.
USAGE="[--run R] [--wait] [--timeout S] [--vm] [common flags]"
ABOUT="Sends SIGTERM to run R's trainer on every worker; --wait waits for them to save and exit; --vm then stops the TPU VM."
FLAGS_HELP="  --run R      the run launch.sh --run R started (default: the last one)
  --wait       wait until every trainer has exited (fails if one still runs after --timeout)
  --timeout S  seconds to wait (default 1800: a step and its checkpoint)
  --vm         wait, then stop the TPU VM (gcloud compute tpus tpu-vm stop; Cloud TPU may refuse it for
               multi-host slices and queued resources: delete.sh, queued.sh delete then)"
RUN=""
WAIT=0
TIMEOUT=1800
STOP_VM=0
script_flag() {
  case "$1" in
    --run) need_value "$@"; need_run_name "$1" "$2"; RUN="$2"; CONSUMED=2 ;;
    --wait) WAIT=1; CONSUMED=1 ;;
    --timeout) need_value "$@"; need_int "$1" "$2"; TIMEOUT="$2"; CONSUMED=2 ;;
    --vm) STOP_VM=1; WAIT=1; CONSUMED=1 ;;
    *) return 1 ;;
  esac
}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_args "$@"
# shellcheck disable=SC2016  # expands on the worker
SIGNAL='if alive; then kill -TERM "$pid"; echo "worker $w: sent SIGTERM to run $run (pid $pid)"; else echo "worker $w: not training${run:+ (run $run)}"; fi; '
WAIT_CODE=""
if [[ "$WAIT" -eq 1 ]]; then
  # shellcheck disable=SC2016  # expands on the worker
  WAIT_CODE="$(printf 'i=0; while alive && [ "$i" -lt %s ]; do sleep 1; i=$((i + 1)); done; if alive; then echo "worker $w: run $run still running after %ss"; exit 1; fi; echo "worker $w: stopped${run:+ (run $run)}"' "$TIMEOUT" "$TIMEOUT")"
fi
on_all_workers "$(remote_prelude "$RUN")$SIGNAL$WAIT_CODE"
if [[ "$STOP_VM" -eq 1 ]]; then
  tpus tpu-vm stop "$NAME"
fi
