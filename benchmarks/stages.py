"""Where the worker's CPU goes, per document, without a broker.

Decodes 100-document CEB messages, normalises them, and runs the whole batch
pipeline on a real Redis (embedded, or REDIS_URL) with outputs captured in
memory, timing each stage in process CPU µs per document.

The collector is tuned as the worker tunes it (streams.app.tune_gc) unless
--default-gc is given.

Usage: python -m benchmarks.stages [--orders 4000] [--format json|xml|dxp] [--rules spine|FILE] [--default-gc]
       [--redis-commands] [--redis-memory]
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import time
from typing import Any

import redis.asyncio as aioredis
from config.settings import Settings, load_settings
from processors import decide, ruleset
from processors.documents import normalise
from streams import embedded, state
from streams.pipeline import InRecord, Pipeline
from streams.simulator import generate, to_dxp, to_json, to_xml
from topics import ceb, registry


class MemorySink:
    def __init__(self) -> None:
        self.count = 0

    def produce(self, topic: str, key: str, value: bytes) -> None:
        self.count += 1

    async def flush(self) -> None:
        return None


def make_batches(orders: int, fmt: str = "json", prefix: str = "HN") -> list[list[InRecord]]:
    """Consumed batches of four 100-document messages (one per type) for the same
    100 orders, all of them clean: every order completes and is released."""
    enc = {"xml": to_xml, "dxp": to_dxp}.get(fmt, to_json)
    generated = list(generate(orders, seed=1, mix={"ok": 1.0}, prefix=prefix))
    offset = 0
    batches: list[list[InRecord]] = []
    for i in range(0, len(generated), 100):
        chunk = generated[i:i + 100]
        batch = []
        for t in ("311", "411", "511", "621"):
            offset += 1
            batch.append(InRecord(registry.sender_topic(t).name, 0, offset, b"k",
                                  enc(t, [o.docs[t] for o in chunk]), int(time.time() * 1000)))
        batches.append(batch)
    return batches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=4000)
    ap.add_argument("--format", choices=["json", "xml", "dxp"], default="json")
    ap.add_argument("--rules", default="spine",
                    help='"spine" (comparison + limits) or a rule-set file (e.g. config/rules/default.yaml)')
    ap.add_argument("--default-gc", action="store_true", help="leave Python's collector as it is")
    ap.add_argument("--redis-commands", action="store_true",
                    help="also list Redis's time per command (scripts and the commands they call)")
    ap.add_argument("--redis-cluster", action="store_true",
                    help="on a local three-node Redis Cluster: Redis's CPU per document on each node")
    ap.add_argument("--redis-memory", action="store_true",
                    help="also Redis's memory per decided order, by key family (MEMORY USAGE of every key; "
                         "on the embedded Redis or an empty REDIS_URL)")
    args = ap.parse_args()
    base = load_settings()
    if args.redis_cluster:
        import tempfile

        services: Any = embedded.LocalCluster(tempfile.mkdtemp(prefix="clearance-cluster-"))
        settings = Settings(kafka_bootstrap="unused:1", redis_url=services.url, redis_cluster=True)
    else:
        services = embedded.start("unused:1", base.redis_url)
        settings = Settings(kafka_bootstrap="unused:1", redis_url=services.redis_url)
    batches = make_batches(args.orders, args.format)
    n = 4 * args.orders
    if not args.default_gc:
        from streams.app import tune_gc

        tune_gc()
    try:
        c = time.process_time()
        msgs = [ceb.decode(r.value or b"") for b in batches for r in b]
        decode_us = 1e6 * (time.process_time() - c) / n
        c = time.process_time()
        for msg in msgs:
            for d in msg.documents:
                normalise(d.kind, d.head, d.lines, b"k")
        normalise_us = 1e6 * (time.process_time() - c) / n
        print(f"{args.format}: decode+validate {decode_us:.1f} µs/doc, normalise {normalise_us:.1f} µs/doc")
        rules = decide.SpineRules() if args.rules == "spine" else ruleset.load(args.rules)
        print(f"rules: {rules.version}")
        sync = state.sync_client_for(settings)
        used_before = int(sync.info("memory")["used_memory"])
        asyncio.run(_pipeline(settings, batches, n, rules, args.redis_commands))
        if args.redis_memory:
            redis_memory(sync, args.orders, int(sync.info("memory")["used_memory"]) - used_before)
    finally:
        services.stop()


async def _pipeline(settings: Settings, batches: list[list[InRecord]], n: int, rules: Any,
                    args_verbose: bool = False) -> None:
    acc: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        if asyncio.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def aw(*a: Any, **k: Any) -> Any:
                c = time.process_time()
                try:
                    return await fn(*a, **k)
                finally:
                    acc[name] = acc.get(name, 0.0) + time.process_time() - c
            return aw

        @functools.wraps(fn)
        def w(*a: Any, **k: Any) -> Any:
            c = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.process_time() - c
        return w

    client = state.async_client_for(settings)
    p = Pipeline(settings, client, MemorySink(), rules)
    if settings.redis_cluster:
        await client.initialize()  # reads the cluster's nodes
    redis_nodes = [client] if not settings.redis_cluster else [
        aioredis.Redis(host=n.host, port=n.port) for n in client.get_primaries()]
    p._decode = timed("decode + normalise", p._decode)  # type: ignore[method-assign]
    p._on_match = timed("match replies + arrival receipts", p._on_match)  # type: ignore[method-assign]
    p._decide = timed("rules + quota/serial round trip", p._decide)  # type: ignore[method-assign]
    p._emit = timed("store, produce, receipts, confirm", p._emit)  # type: ignore[method-assign]
    for r in redis_nodes:
        await r.config_resetstat()
    redis_before = [redis_cpu_seconds(await r.info("cpu")) for r in redis_nodes]
    c, w = time.process_time(), time.perf_counter()
    for b in batches:
        await p.process(b)
    total = time.process_time() - c
    wall = time.perf_counter() - w
    per_node = [redis_cpu_seconds(await r.info("cpu")) - before for r, before in zip(redis_nodes, redis_before)]
    redis_cpu = sum(per_node)
    if args_verbose:
        for name, st in sorted((await client.info("commandstats")).items(), key=lambda kv: -kv[1]["usec"]):
            print(f"    {name:28} {st['calls']:8} calls {st['usec'] / n:6.1f} µs/doc")
    for k, v in acc.items():
        print(f"  {k:36} {1e6 * v / n:7.1f} µs/doc")
    print(f"  {'whole batch pipeline':36} {1e6 * total / n:7.1f} µs/doc CPU, {n / wall:,.0f} documents/s")
    # Redis runs the scripts on one thread: its CPU per document caps what one
    # Redis (or, on a cluster, its busiest shard) can take.
    print(f"  {'Redis server (its own process)':36} {1e6 * redis_cpu / n:7.1f} µs/doc CPU, "
          f"at most {n / redis_cpu:,.0f} documents/s per Redis core")
    if len(per_node) > 1:
        shares = " / ".join(f"{1e6 * cpu / n:.1f}" for cpu in per_node)
        print(f"  {'Redis per cluster node':36} {shares} µs/doc CPU: the busiest caps the group at "
              f"{n / max(per_node):,.0f} documents/s")
        for r in redis_nodes:
            await r.aclose()
    await p.aclose()
    await client.aclose()


def redis_memory(r: Any, orders: int, used: int) -> None:
    """What the decided orders hold in Redis, per order: every order is decided
    and confirmed, so this is the state kept for the retention
    (CLEARANCE_DECIDED_TTL_S), by key family (clr:<family>:..., the trace
    indexes by kind)."""
    families: dict[str, list[int]] = {}
    for raw in r.scan_iter(match=state.NS + ":*", count=1000):
        parts = raw.decode().split(":")
        family = parts[1] + (":" + parts[3] if parts[1] == "idx" else "")
        entry = families.setdefault(family, [0, 0])
        entry[0] += 1
        entry[1] += r.memory_usage(raw, samples=0) or 0
    total = sum(size for _, size in families.values())
    print(f"  Redis memory per decided order: {used / orders:,.0f} bytes (used_memory's growth over the run), "
          f"{total / orders:,.0f} in its keys (MEMORY USAGE), by family:")
    for family, (keys, size) in sorted(families.items(), key=lambda kv: -kv[1][1]):
        print(f"    {state.NS}:{family:12} {keys:8} keys {size / orders:8,.0f} bytes per order")


def redis_cpu_seconds(info: dict[str, Any]) -> float:
    """Redis's own CPU time so far (user + system) from an INFO cpu reply."""
    return float(info.get("used_cpu_user", 0)) + float(info.get("used_cpu_sys", 0))


if __name__ == "__main__":
    main()
