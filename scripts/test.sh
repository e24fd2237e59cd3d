#!/usr/bin/env bash
# `make test`: every test on two xdist workers, then the tests marked `stacks` (the Ray check, the
# NDIF stack), which start processes of their own: alone, one after the other on one worker (each
# stack in its own loopback-only namespace, every process with one thread).
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
# A stack runs several processes at once (Ray workers, NDIF's services, actors and client): one thread each.
for variable in OMP_NUM_THREADS MKL_NUM_THREADS OPENBLAS_NUM_THREADS LP_NUM_THREADS NNSIGHT_VLA_CPU_THREADS; do
  export "$variable=${!variable:-1}"
done
run "$python" -m pytest -n 1 --dist loadgroup --durations=10 -m stacks "$@"
