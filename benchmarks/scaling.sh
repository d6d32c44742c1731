#!/usr/bin/env bash
# Prepared scaling run for a larger machine (≥ 16 cores): N = 1, 2, 4, 8 worker
# processes on 16 partitions, everything else as `make bench`.
#   bash benchmarks/scaling.sh                 # installs with `make install`, results in benchmarks/results/
#   WHEELS=.whl bash benchmarks/scaling.sh     # a machine with no package index: install the wheels that
#                                              # benchmarks/wheels.sh downloaded, into $SITE, for its python3
# Knobs (environment): WORKERS, PARTITIONS, CONFIG, ORDERS, STEP_SECONDS, PROBES, PROBE_SECONDS, RESULTS (folder).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${WHEELS:-}" ]; then
  SITE="${SITE:-/tmp/clearance-site}"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  PY=python3
else
  make -s install
  PY=.venv/bin/python
fi
"$PY" -m benchmarks.scaling --workers "${WORKERS:-1,2,4,8}" --partitions "${PARTITIONS:-16}" \
  --config "${CONFIG:-batch100-json}" --orders "${ORDERS:-20000}" --step-seconds "${STEP_SECONDS:-8}" \
  --probes "${PROBES:-3}" --probe-seconds "${PROBE_SECONDS:-6}" --out "${RESULTS:-benchmarks/results}"
