#!/usr/bin/env bash
# README command 2 (and what CI runs): unit tests, every notebook under nbval in quick mode, then the
# smoke run: every notebook through its full-mode branches, capped and offline (run_course --smoke).
#   bash scripts/test.sh                  everything
#   bash scripts/test.sh tests/test_pets.py   pytest arguments pass through (no smoke run)
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# The smoke run takes the user's data folders (TLH_PETS_DIR, TLH_CIFAR10_DIR) when set; the tests never do.
smoke_pets="${TLH_PETS_DIR:-}" smoke_cifar="${TLH_CIFAR10_DIR:-}"
unset TLH_PETS_DIR TLH_CIFAR10_DIR TLH_MAX_STEPS TLH_MAX_BATCH_SIZE
export TLH_QUICK=1 MPLBACKEND=Agg
# Sample data for the notebooks goes to its own folder, never over a real download in data/.
export TLH_DATA_DIR="${TLH_TEST_DATA_DIR:-$REPO/build/test-data}"
# Real-data tests read TLH_CIFAR10_TEST_DATA (a CIFAR-10 image-folder tree or .zip); they skip without it.
if [ $# -gt 0 ]; then
    exec python -m pytest --nbval-lax --durations=15 "$@"
fi
python -m pytest --nbval-lax --durations=15 tests notebooks || exit $?
TLH_PETS_DIR="$smoke_pets" TLH_CIFAR10_DIR="$smoke_cifar" exec python -m tlhelpers.tools.run_course --smoke
