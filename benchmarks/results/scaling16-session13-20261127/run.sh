#!/usr/bin/env bash
# Lent 16-core machine, thirteenth session: scaling N = 1, 2, 4, 8 of the working tree with the
# fourth session's command, then one worker of the fourth session's end (62219c0, .whl/old.tar)
# and one worker of the working tree with two batches in flight, same knobs, each on a fresh
# broker and Redis. Results packed into $OUT/res.tgz after every piece (a cut run keeps what ran).
set -u
export PYTHONUNBUFFERED=1
SITE=/tmp/site
R=/tmp/res
T0=$(date +%s)
nproc; python3 --version; free -g | head -2
[ -n "${DRY:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --target $SITE .whl/*.whl || exit 1
export PYTHONPATH=$SITE:$PWD
mkdir -p /tmp/old $R && tar -xf .whl/old.tar -C /tmp/old
echo "installed at $(( $(date +%s) - T0 )) s"
clean() { pkill -9 -f 'streams.cli worker' ; pkill -9 -f tansu ; pkill -9 -f redis-server ; sleep 1; }
pack() { tar -czf $OUT/res.tgz -C /tmp res; echo "== $1 done at $(( $(date +%s) - T0 )) s"; }
A=${A:-"--partitions 16 --step-seconds 8 --probes 3 --probe-seconds 6 --orders 20000 --rules default"}
timeout ${SCALE_S:-400} python3 -m benchmarks.scaling --workers ${WORKERS:-1,2,4,8} --config batch100-json $A \
  --steps 50,100 --out $R > $OUT/scaling.log 2>&1
echo "scaling rc=$?"; clean; pack scaling
(cd /tmp/old && PYTHONPATH=$SITE:/tmp/old timeout ${ONE_S:-100} python3 -m benchmarks.throughput \
  --configs batch100-json --workers 1 $A --steps 50,100 --out $R --label old-62219c0-w1 --no-plots) > $OUT/old.log 2>&1
echo "old rc=$?"; clean; pack old
CLEARANCE_INFLIGHT_BATCHES=2 timeout ${ONE_S:-100} python3 -m benchmarks.throughput --configs batch100-json \
  --workers 1 $A --steps 50,100 --out $R --label new-w1-inflight2 --no-plots > $OUT/inflight2.log 2>&1
echo "inflight2 rc=$?"; clean; pack inflight2
grep -h "^| [0-9]" $R/scaling-*.md
for f in $R/bench-old-*/summary.md $R/bench-new-w1-inflight2/summary.md; do
  echo "-- $f"; grep -h "Saturation\|CPU per process\|^| 50\|^| 100" "$f" | cut -c1-200
done
