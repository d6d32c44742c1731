"""Redis's own CPU per document for the two scripts that cost it most.

MATCH is called as the worker calls it (100 documents of ~1 KB per call, the
four documents of each order in four calls, the fourth completing it) and
OBSERVE with the four risk counters of each order (new buyers, addresses and
phones). Redis runs scripts on one thread for every worker of the group, so
these numbers bound what one Redis core can take. Always on an embedded Redis
of its own (it empties the database between runs).

Usage: python -m benchmarks.redis_scripts [--orders 10000] [--repeat 3]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import time

import redis

from benchmarks.stages import redis_cpu_seconds
from streams import embedded, state

META = b'{"fmt":"json","snd":"4601XXXXAA","at":1,"rts":1,"src":"t:0:1"}'


def _cpu(r: redis.Redis) -> float:
    return redis_cpu_seconds(r.info("cpu"))


def match(r: redis.Redis, orders: int) -> tuple[float, int]:
    """(Redis CPU µs per document, orders the fourth call completed)."""
    script = r.register_script(state.MATCH)
    payload = os.urandom(500).hex().encode()
    digest = hashlib.sha1(payload).hexdigest()
    r.flushdb()
    completed = 0
    start = _cpu(r)
    for b in range(orders // 100):
        orders_ = [f"clr:o:{{o00}}:E{state.SEP}B{b}:{i}" for i in range(100)]
        waybills = [f"clr:w:{{o00}}:B{b}:{i}{state.SEP}L{state.SEP}W{i}" for i in range(100)]
        for t in ("311", "411", "511", "621"):
            # Each document's own key and its second one (the list's waybill key), as the worker sends them.
            own, second = (waybills, waybills) if t == "511" else (orders_, waybills if t == "621" else orders_)
            keys = ["clr:p:{o00}"] + [k for pair in zip(own, second) for k in pair]
            args: list[object] = [1, 3000]
            for _ in range(100):
                args += [t, payload, META, digest, "1"]
            replies = script(keys=keys, args=args)
        completed += sum(1 for reply in state.match_replies(replies) if reply[0] == b"M")
    return 1e6 * (_cpu(r) - start) / (4 * (orders // 100) * 100), completed


def observe(r: redis.Redis, orders: int) -> float:
    script = r.register_script(state.OBSERVE)
    rng = random.Random(1)
    r.flushdb()
    now = int(time.time() * 1000)
    start = _cpu(r)
    for b in range(orders // 100):
        keys: list[str] = []
        args: list[object] = [now]
        for i in range(100):
            buyer, address, phone = ("h:%024x" % rng.getrandbits(96) for _ in range(3))
            for family, entity, member in (("buyer", buyer, f"clr:o:{{o00}}:B{b}:{i}|12345|0"),
                                           ("address", address, buyer), ("phone", phone, buyer),
                                           ("buyer_addresses", buyer, address)):
                keys.append(f"clr:f:{{f00}}:{family}:{entity}")
                args += [family, member]
        script(keys=keys, args=args)
    return 1e6 * (_cpu(r) - start) / (4 * (orders // 100) * 100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    services = embedded.start("unused:1", "")  # never REDIS_URL: flushdb below
    try:
        r = redis.Redis.from_url(services.redis_url)
        for _ in range(args.repeat):
            us, completed = match(r, args.orders)
            print(f"MATCH   {us:6.1f} µs of Redis CPU per document ({completed:,} orders completed)")
            print(f"OBSERVE {observe(r, args.orders):6.1f} µs of Redis CPU per document (4 counters per order)")
        r.flushdb()
    finally:
        services.stop()


if __name__ == "__main__":
    main()
