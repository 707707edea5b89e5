#!/usr/bin/env bash
# shellcheck disable=SC2034  # some variables set here are read only by the scripts that source it
# Shared by the Cloud TPU VM scripts (sourced, never run): the common flags and --help, one policy for user
# errors (one line, exit 2), `run`, which prints every gcloud command and runs it unless --dry-run, and the
# shell code the scripts run on the workers.
#
# A script sets USAGE (its synopsis after the script name), ABOUT (what it does) and optionally FLAGS_HELP,
# script_flag (its own flags: called with the remaining arguments, it sets CONSUMED to the number it took,
# or returns 1 for a flag it does not know) and TRAIN_ARGS=1 (it needs training arguments after --), sources
# this file and calls parse_args "$@".
set -euo pipefail

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NAME="${TPU_NAME:-slas-jax}"
ZONE="${TPU_ZONE:-us-central2-b}"
ACCELERATOR="${TPU_ACCELERATOR:-v4-32}"
# Whether the accelerator type was given (flag or environment) rather than defaulted: launch.sh then asks the
# TPU VM for its own type, so that the preflight checks the slice that exists.
ACCELERATOR_GIVEN="${TPU_ACCELERATOR:+1}"
VERSION="${TPU_VERSION:-}"
PROJECT="${TPU_PROJECT:-}"
# The launching machine's interpreter, for the preflight (it needs slas-jax installed there).
PYTHON="${PYTHON:-python3}"
DRY_RUN=0
REMOTE_DIR="slas-jax"
EXTRA=()
CONSUMED=0

die() {
  echo "error: $*" >&2
  exit 2
}

usage() {
  printf 'usage: %s %s\n  %s\n' "$(basename "$0")" "$USAGE" "$ABOUT"
  if [[ -n "${FLAGS_HELP:-}" ]]; then
    printf '%s\n' "$FLAGS_HELP"
  fi
  cat <<'COMMON'
common flags (each also --flag=value):
  --name N         the TPU VM (TPU_NAME; default slas-jax)
  --zone Z         its zone (TPU_ZONE; default us-central2-b)
  --accelerator A  the slice type: v4-32, v5p-64, v5litepod-16, v6e-16, ... (TPU_ACCELERATOR; default v4-32)
  --version V      TPU software version (TPU_VERSION; default from the accelerator: tpu-ubuntu2204-base for
                   v4, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv5-lite for v5litepod, v2-alpha-tpuv6e for v6e)
  --project P      the Google Cloud project (TPU_PROJECT; default gcloud's)
  --dry-run        print the gcloud commands instead of running them
  -h, --help       this text
COMMON
}

# $1: the flag; fails unless a value follows it.
need_value() {
  [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
}

need_int() {
  [[ "$2" =~ ^[0-9]+$ ]] || die "$1 takes a whole number of at least 0, got '$2'"
}

# Run names become file names on the workers and go into their shell unquoted.
need_run_name() {
  [[ "$2" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "$1 takes letters, digits, '.', '_' and '-', got '$2'"
}

parse_args() {
  while [[ $# -gt 0 ]]; do
    if [[ "$1" == --*=* ]]; then
      set -- "${1%%=*}" "${1#*=}" "${@:2}"
    fi
    case "$1" in
      --name) need_value "$@"; NAME="$2"; shift 2 ;;
      --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
      --accelerator) need_value "$@"; ACCELERATOR="$2"; ACCELERATOR_GIVEN=1; shift 2 ;;
      --version) need_value "$@"; VERSION="$2"; shift 2 ;;
      --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) usage; exit 0 ;;
      --) shift; EXTRA=("$@"); break ;;
      *)
        if declare -F script_flag >/dev/null && script_flag "$@"; then
          shift "$CONSUMED"
        else
          die "unknown argument $1 (see --help)"
        fi
        ;;
    esac
  done
  if [[ -n "${TRAIN_ARGS:-}" && ${#EXTRA[@]} -eq 0 ]]; then
    die "pass the training arguments after --, e.g. -- --config configs/sd_tpu.py"
  fi
  if [[ -z "${TRAIN_ARGS:-}" && ${#EXTRA[@]} -gt 0 ]]; then
    die "$(basename "$0") takes no arguments after --"
  fi
  [[ -n "$NAME" && -n "$ZONE" ]] || die "--name and --zone must not be empty"
  PROJECT_FLAG=()
  if [[ -n "$PROJECT" ]]; then
    PROJECT_FLAG=(--project "$PROJECT")
  fi
  if [[ -z "$VERSION" ]]; then
    VERSION="$(default_version "$ACCELERATOR")"
  fi
}

# The TPU software version each generation's JAX runs on (Cloud TPU's "TPU software versions" page).
default_version() {
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

show() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}

# A gcloud command: printed, and run unless --dry-run.
run() {
  show "$@"
  if [[ "$DRY_RUN" -eq 0 ]]; then
    "$@"
  fi
}

# A local, read-only step (the preflight): printed, and run even under --dry-run, because a dry run should
# show what the launch would refuse.
run_local() {
  show "$@"
  "$@"
}

# gcloud compute tpus GROUP VERB [RESOURCE] --zone Z [--project P] FLAGS...; RESOURCE "" for list.
tpus() {
  local group="$1" verb="$2" resource="$3"
  shift 3
  run gcloud compute tpus "$group" "$verb" ${resource:+"$resource"} --zone "$ZONE" "${PROJECT_FLAG[@]}" "$@"
}

on_all_workers() {
  tpus tpu-vm ssh "$NAME" --worker=all --command "$1"
}

# $1: what is deleted; asks on a terminal, refuses elsewhere, unless --yes was given (YES=1).
confirm() {
  if [[ "${YES:-0}" -eq 1 ]]; then
    return 0
  fi
  if [[ ! -t 0 ]]; then
    die "refusing to delete $1 without --yes"
  fi
  local answer
  read -r -p "delete $1? [y/N] " answer
  [[ "$answer" == [yY] || "$answer" == [yY][eE][sS] ]] || die "not deleted"
}

# Where launch.sh leaves each run on every worker: <run>.log (the trainer's output), <run>.pid, and `latest`
# (the last run's name), so that status, logs and stop find the run without being told.
# shellcheck disable=SC2088  # the tilde expands on the worker
LOG_DIR='~/slas_jax_logs'

# The shell code each remote command starts with, on every worker: $w, this worker's index (the metadata
# JAX's own TPU cluster detection reads), $run (RUN, else the last launched run), $pid, and `alive`, true
# while that pid is a slas_jax.train process (a pid file outlives its process, and pids are reused).
# $1: the run ("" for the last one).
remote_prelude() {
  # shellcheck disable=SC2016  # expands on the worker
  printf 'RUN=%s; d=%s; %s' "$1" "$LOG_DIR" \
    'w=$(curl -sf -H "Metadata-Flavor: Google" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || echo "?"); run=${RUN:-$(cat "$d/latest" 2>/dev/null)}; pid=$(cat "$d/$run.pid" 2>/dev/null); alive() { [ -n "$run" ] && [ -n "$pid" ] && tr "\0" " " < "/proc/$pid/cmdline" 2>/dev/null | grep -q slas_jax.train; }; '
}

# Sets ACCELERATOR to the slice's own type when none was given: a preflight against the default would check
# the wrong slice. Under --dry-run the query is only printed and the default stands.
resolve_accelerator() {
  if [[ -n "$ACCELERATOR_GIVEN" ]]; then
    return 0
  fi
  local query=(gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --format 'value(acceleratorType)')
  show "${query[@]}"
  if [[ "$DRY_RUN" -eq 1 ]]; then
    echo "(dry run: assuming --accelerator $ACCELERATOR)"
    return 0
  fi
  ACCELERATOR="$("${query[@]}")"
  [[ -n "$ACCELERATOR" ]] || die "gcloud did not report the accelerator type of $NAME; pass --accelerator"
}

# The preflight (tpu_scripts/preflight.py): the training arguments "$@" against the slice, before launching.
# It runs in the checkout's root, as the trainer does on the workers (~/slas-jax), so that the paths in the
# arguments (--config configs/X.py) name the same files.
preflight() {
  resolve_accelerator
  (cd "$SCRIPTS_DIR/.." && run_local "$PYTHON" tpu_scripts/preflight.py --accelerator "$ACCELERATOR" -- "$@")
}
