#!/usr/bin/env bash
# `make test`: every test on two xdist workers, then the tests marked `stacks` (the Ray check, the
# NDIF stack), which start processes of their own: alone, the two at the same time (their own xdist
# groups, each in its own loopback-only namespace), each process with one thread.
# Arguments go to both runs; a run they select nothing in (pytest's status 5) is not a failure.
set -uo pipefail
python=$1
shift
run() {
  "$@"
  local status=$?
  [ "$status" -eq 0 ] || [ "$status" -eq 5 ] || exit "$status"
}
run "$python" -m pytest -n 2 --dist loadgroup --durations=20 -m "not stacks" "$@"
run "$python" -m pytest -n 2 --dist loadgroup --durations=10 -m stacks "$@"
