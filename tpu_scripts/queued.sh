#!/usr/bin/env bash
# Queued resources: a request for a slice that Cloud TPU fills when capacity frees up (the recommended way to
# get large or spot slices) and that then holds the TPU VM --name; deleting it deletes that VM too.
USAGE="create|list|describe|delete [--qr Q] [--spot | --reserved] [--valid-until-duration D] [--yes] [common flags]"
ABOUT="Creates, lists, describes (its state: WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, ...) or deletes the queued resource Q for the TPU VM --name."
FLAGS_HELP="  --qr Q                    the queued resource (TPU_QR; default <name>-qr)
  --spot                    create: a spot slice (cheaper; preempted at any time: the trainer saves on SIGTERM)
  --reserved                create: from the project's reservation
  --valid-until-duration D  create: give up if not filled within D (e.g. 6h)
  --yes                     delete without asking (delete also deletes the TPU VM: --force)"
ACTION=""
QR="${TPU_QR:-}"
SPOT=0
RESERVED=0
VALID_UNTIL=""
YES=0
script_flag() {
  case "$1" in
    create|list|describe|delete)
      [[ -z "$ACTION" ]] || die "one action at a time, got $ACTION and $1"
      ACTION="$1"; CONSUMED=1 ;;
    --qr) need_value "$@"; QR="$2"; CONSUMED=2 ;;
    --spot) SPOT=1; CONSUMED=1 ;;
    --reserved) RESERVED=1; CONSUMED=1 ;;
    --valid-until-duration) need_value "$@"; VALID_UNTIL="$2"; CONSUMED=2 ;;
    --yes) YES=1; CONSUMED=1 ;;
    *) return 1 ;;
  esac
}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_args "$@"
[[ -n "$ACTION" ]] || die "name an action: create, list, describe or delete (see --help)"
QR="${QR:-$NAME-qr}"
if [[ "$ACTION" != create && ( "$SPOT" -eq 1 || "$RESERVED" -eq 1 || -n "$VALID_UNTIL" ) ]]; then
  die "--spot, --reserved and --valid-until-duration apply to create only"
fi
case "$ACTION" in
  create)
    [[ "$SPOT" -eq 0 || "$RESERVED" -eq 0 ]] || die "choose --spot or --reserved, not both"
    OPTIONS=()
    if [[ "$SPOT" -eq 1 ]]; then OPTIONS+=(--spot); fi
    if [[ "$RESERVED" -eq 1 ]]; then OPTIONS+=(--reserved); fi
    if [[ -n "$VALID_UNTIL" ]]; then OPTIONS+=(--valid-until-duration "$VALID_UNTIL"); fi
    tpus queued-resources create "$QR" --node-id "$NAME" --accelerator-type "$ACCELERATOR" \
      --runtime-version "$VERSION" "${OPTIONS[@]}"
    ;;
  list) tpus queued-resources list "" ;;
  describe) tpus queued-resources describe "$QR" ;;
  delete)
    confirm "queued resource $QR and its TPU VM $NAME in $ZONE"
    # --force: its TPU VM is deleted first (without it, Cloud TPU refuses while the VM exists).
    tpus queued-resources delete "$QR" --force --quiet
    ;;
esac
