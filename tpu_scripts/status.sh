#!/usr/bin/env bash
# Where a run stands: the TPU VM's state and health as Cloud TPU reports them, then on every worker whether
# the trainer is running, with the last line of its log.
USAGE="[--run R] [--list] [common flags]"
ABOUT="Describes the TPU VM (state, health) and reports on every worker whether run R (default: the last one) is training."
FLAGS_HELP="  --run R   the run launch.sh --run R started (default: the last one)
  --list    only list the zone's TPU VMs with their state and health"
RUN=""
LIST=0
script_flag() {
  case "$1" in
    --run) need_value "$@"; need_run_name "$1" "$2"; RUN="$2"; CONSUMED=2 ;;
    --list) LIST=1; CONSUMED=1 ;;
    *) return 1 ;;
  esac
}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_args "$@"
FIELDS='name.basename(),acceleratorType,state,health,healthDescription'
if [[ "$LIST" -eq 1 ]]; then
  tpus tpu-vm list "" --format "table($FIELDS)"
  exit 0
fi
tpus tpu-vm describe "$NAME" --format "table($FIELDS)"
# The log's last line: tqdm redraws its bar with carriage returns, so the last "line" is the last redraw.
# shellcheck disable=SC2016  # expands on the worker
CHECK='last=$(tail -c 4096 "$d/$run.log" 2>/dev/null | tr "\r" "\n" | grep -v "^[[:space:]]*$" | tail -n 1); if alive; then echo "worker $w: training, run $run (pid $pid): $last"; elif [ -n "$run" ]; then echo "worker $w: not training; run $run ended: $last"; else echo "worker $w: not training; no run launched"; fi'
on_all_workers "$(remote_prelude "$RUN")$CHECK"
