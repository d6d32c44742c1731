#!/usr/bin/env bash
# Prepared scaling run for a larger machine (≥ 16 cores): N = 1, 2, 4, 8 worker
# processes on 16 partitions, everything else as `make bench`. One command, no
# network needed beyond the package index used by `make install`:
#   bash benchmarks/scaling.sh            # results in benchmarks/results/scaling-*
set -euo pipefail
cd "$(dirname "$0")/.."
make -s install
.venv/bin/python -m benchmarks.scaling --workers "${WORKERS:-1,2,4,8}" --partitions "${PARTITIONS:-16}" \
  --config "${CONFIG:-batch100-json}" --step-seconds "${STEP_SECONDS:-15}" --orders "${ORDERS:-20000}"
