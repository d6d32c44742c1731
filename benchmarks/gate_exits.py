"""What a gate's exit costs, on the embedded broker and Redis: `Gate.batch_exit`
of N releasable parcels of one bonded area, four rounds (the first warms up).

Each exit is recorded by one script call (with the event it owes, in the
outbox), and the round's exit events are sent together and waited for once.

Usage: python -m benchmarks.gate_exits [N]   (default 200)
"""
from __future__ import annotations

import dataclasses
import sys
import time

from config.settings import Settings
from streams import embedded
from streams.gate import Gate
from topics import registry


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    svc = embedded.start()
    try:
        s = dataclasses.replace(Settings(kafka_bootstrap=svc.kafka_bootstrap, redis_url=svc.redis_url),
                                topic_prefix="bench-gate.")
        registry.ensure_topics(s)
        g = Gate(s)
        for rnd in range(4):
            g.record([{"logisticsNo": f"YT{rnd}-{i:05d}", "orderNo": f"O{i}", "invtNo": f"I{i}",
                       "areaCode": f"A{rnd}", "billNo": "", "releasedAt": 1} for i in range(n)])
            t = time.perf_counter()
            out = g.batch_exit(f"A{rnd}", "G1")
            dt = time.perf_counter() - t
            print(f"round {rnd}: {len(out['exited'])} parcels exited in {dt * 1000:.0f} ms "
                  f"({dt * 1000 / n:.2f} ms each), {g.pending_exits()} exit events owed")
    finally:
        svc.stop()


if __name__ == "__main__":
    main()
