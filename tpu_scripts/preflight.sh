#!/usr/bin/env bash
# Checks a training config against a slice on this machine, without touching the TPU VM: what launch.sh runs
# first. It needs slas-jax installed here (pip install -e .).
USAGE="[common flags] -- TRAIN_ARGS (--config configs/X.py [--config.a.b=v ...])"
ABOUT="Refuses (exit 2) a config whose mesh or batch does not split over the slice's chips or whose memory plan (python -m slas_jax.plan) does not fit their HBM."
TRAIN_ARGS=1
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"
parse_args "$@"
preflight "${EXTRA[@]}"
