#!/usr/bin/env bash
# Run a command in a private network namespace that has only loopback (needs root).
# Ray listens on every interface even when told 127.0.0.1; inside here it cannot.
set -euo pipefail
exec unshare --net -- sh -c 'ip link set lo up && exec "$@"' sh "$@"
