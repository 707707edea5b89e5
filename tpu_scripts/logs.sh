#!/usr/bin/env bash
# The trainer's output from every worker (process 0 logs the metrics; the others show their own errors),
# each line prefixed with its worker.
USAGE="[--run R] [--lines N] [--follow] [common flags]"
ABOUT="Prints the last N lines of run R's log (~/slas_jax_logs/R.log) of every worker, each line as 'worker K: ...'."
FLAGS_HELP="  --run R    the run launch.sh --run R started (default: the last one)
  --lines N  lines per worker (default 20)
  --follow   keep printing as the logs grow (Ctrl-C to stop)"
RUN=""
LINES=20
FOLLOW=0
script_flag() {
  case "$1" in
    --run) need_value "$@"; need_run_name "$1" "$2"; RUN="$2"; CONSUMED=2 ;;
    --lines) need_value "$@"; need_int "$1" "$2"; LINES="$2"; CONSUMED=2 ;;
    --follow) FOLLOW=1; CONSUMED=1 ;;
    *) return 1 ;;
  esac
}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_args "$@"
# tqdm redraws its bar with carriage returns: they become line breaks, so each redraw is a line. The workers
# print at once; prefixing every line keeps them apart.
if [[ "$FOLLOW" -eq 1 ]]; then
  # shellcheck disable=SC2016  # expands on the worker
  TAIL="$(printf 'tail -n %s -F "$d/$run.log" | stdbuf -o0 tr "\\r" "\\n"' "$LINES")"
else
  # shellcheck disable=SC2016  # expands on the worker
  TAIL="$(printf 'tail -c 1048576 "$d/$run.log" | tr "\\r" "\\n" | grep -v "^[[:space:]]*$" | tail -n %s' "$LINES")"
fi
# shellcheck disable=SC2016  # expands on the worker
SHOW='if [ -z "$run" ] || [ ! -f "$d/$run.log" ]; then echo "worker $w: no log ${run:-(no run launched)}"; else '"$TAIL"' | sed -u "s/^/worker $w: /"; fi'
on_all_workers "$(remote_prelude "$RUN")$SHOW"
