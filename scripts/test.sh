#!/usr/bin/env bash
# README command 2 (and what CI runs): unit tests, then every notebook under nbval in quick mode.
#   bash scripts/test.sh                  everything
#   bash scripts/test.sh tests/test_pets.py   pytest arguments pass through
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export TLH_QUICK=1 MPLBACKEND=Agg
# Sample data for the notebooks goes to its own folder, never over a real download in data/.
export TLH_DATA_DIR="${TLH_TEST_DATA_DIR:-$REPO/build/test-data}"
# Real-data tests read TLH_CIFAR10_TEST_DATA (a CIFAR-10 image-folder tree or .zip); they skip without it.
if [ $# -eq 0 ]; then set -- tests notebooks; fi
exec python -m pytest --nbval-lax --durations=15 "$@"
