#!/usr/bin/env bash
# README command 1: run the whole course end to end, headless (quick mode by default).
#   bash scripts/run_course.sh            quick mode on the small real samples that ship with the course
#   bash scripts/run_course.sh --full     the real datasets (downloads them)
#   bash scripts/run_course.sh 07         only notebook 07
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec python -m tlhelpers.tools.run_course "$@"
