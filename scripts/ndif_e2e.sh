#!/usr/bin/env bash
# Up a local NDIF stack, deploy tiny-openvla, run scripts/ndif_check.py, and take the stack down,
# all inside one loopback-only network namespace (needs root). Usage: scripts/ndif_e2e.sh [PYTHON] [RUN_DIR]
# PYTHON: an environment with ndif 0.1.2, moto[server], gunicorn, ray[default] and this checkout (see nnsight_vla/ndif).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-python}; run=${2:-$root/.ndif-run}
if [ -z "${NDIF_E2E_INSIDE:-}" ]; then
  NDIF_E2E_INSIDE=1 exec "$root/scripts/loopback.sh" "$0" "$python" "$run"
fi
key='nnsight_vla_openvla.model.OpenVLA:{"dtype": null, "revision": null, "source": "tiny-openvla"}'
trap '"$python" -m nnsight_vla.ndif.stack down --run "$run"' EXIT
"$python" -m nnsight_vla.ndif.stack up --run "$run"
"$python" -m nnsight_vla.ndif.stack deploy --run "$run" --size-bytes 50000000 "$key"
TMPDIR="$run/tmp" NDIF_HOST=http://127.0.0.1:8011 "$python" "$root/scripts/ndif_check.py"
