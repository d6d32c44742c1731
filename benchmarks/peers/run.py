"""The same matching job in the project, Quix Streams and a bare confluent-kafka
loop: same broker, same data, same machine, one after the other.

Each system gets a backlog of per-document JSON records keyed by orderNo on
4-partition topics and is timed from its first consumed record to its last
decision. The peers match order + payment + waybill (three documents); the
project runs its match-only configuration (`CLEARANCE_RULES=spine`: the
comparison rules and limits) on the four documents its decision needs,
inventory list included, so it is compared in documents per second.

Then each system is run again, fresh, at one common offered rate (default half
of the project's measured throughput) by the open-loop generator of
benchmarks/openloop.py, and its decision latency is recorded (HdrHistogram,
intended send of the completing document → decision read back).

Usage: python -m benchmarks.peers.run [--orders 10000] [--latency-rate DOCS_PER_S] [--latency-seconds 20]
       (make bench-peers)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks import openloop, report
from config.settings import load_settings
from streams import embedded
from streams.simulator import generate, to_json
from topics import registry

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 4


def create(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # Explicit retention: Tansu does not report a default, and Quix Streams reads it.
    futures = admin.create_topics([NewTopic(n, PARTITIONS, 1, config={"retention.ms": "604800000",
                                                                        "retention.bytes": "-1"}) for n in names])
    for f in futures.values():
        f.result()


def load(bootstrap: str, records: list[tuple[str, str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5", "queue.buffering.max.messages": "2000000"})
    for topic, key, value in records:
        while True:
            try:
                producer.produce(topic, value, key.encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)


QUIX, BARE, PROJECT = "Quix Streams", "bare confluent-kafka loop", "clearance (faust, match-only rule set)"
PEER_TYPES = ("311", "411", "511")


def _peer_cmd(name: str, bootstrap: str, out: str, expected: int, topics: list[str]) -> list[str]:
    if name == BARE:
        return [sys.executable, "-m", "benchmarks.peers.bare_loop", bootstrap, out, str(PARTITIONS), str(expected),
                *topics]
    return [sys.executable, "-m", "benchmarks.peers.quix_app", bootstrap, out, str(expected), tempfile.mkdtemp(),
            *topics]


def peer(name: str, services: embedded.Services, orders: list, tag: str) -> dict:
    topics = [f"{tag}.order", f"{tag}.payment", f"{tag}.logistics"]
    out = f"{tag}.out"
    create(services.kafka_bootstrap, topics + [out])
    load(services.kafka_bootstrap, [(topics[i], o.order_no, to_json(t, [o.docs[t]]))
                                    for o in orders for i, t in enumerate(PEER_TYPES)])
    done = subprocess.run(_peer_cmd(name, services.kafka_bootstrap, out, len(orders), topics), cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    seconds = float(done.stdout.strip().splitlines()[-1])
    return {"system": name, "documents": 3 * len(orders), "seconds": round(seconds, 2),
            "documents_per_s": round(3 * len(orders) / seconds)}


def _start_project(services: embedded.Services, tag: str) -> tuple[subprocess.Popen, Any]:
    env = dict(os.environ, **services.env(), CLEARANCE_TOPIC_PREFIX=f"{tag}.", CLEARANCE_GROUP=tag,
               CLEARANCE_RULES="spine", CLEARANCE_SESSION_TIMEOUT_S="6")
    settings = load_settings(env)
    registry.ensure_topics(settings)
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-port", str(embedded.free_port()),
                               "--loglevel", "warn"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    return worker, settings


def project(services: embedded.Services, orders: list, tag: str) -> dict:
    worker, settings = _start_project(services, tag)
    load(services.kafka_bootstrap, [(registry.topic_name(registry.sender_topic(t), settings), o.order_no,
                                     to_json(t, [o.docs[t]])) for o in orders for t in openloop.ORDER_TYPES])
    try:
        consumer = Consumer(dict(settings.librdkafka_config(), **{"group.id": "peers", "fetch.wait.max.ms": "10"}))
        consumer.assign([TopicPartition(registry.topic_name(registry.DECISIONS, settings), p, 0)
                         for p in range(settings.partitions)])
        first_doc, last = None, 0
        seen = 0
        deadline = time.time() + 900
        while seen < len(orders) and time.time() < deadline:
            for msg in consumer.consume(5000, 0.2):
                if msg.error():
                    continue
                d = orjson.loads(msg.value())
                seen += 1
                first_doc = min(first_doc or d["timestamps"]["firstDocument"], d["timestamps"]["firstDocument"])
                last = max(last, d["timestamps"]["decided"])
        consumer.close()
    finally:
        worker.terminate()
        worker.wait(20)
    seconds = (last - (first_doc or last)) / 1000
    return {"system": "clearance (faust, match-only rule set)", "documents": 4 * len(orders),
            "seconds": round(seconds, 2), "documents_per_s": round(4 * len(orders) / seconds) if seconds else None}


def latency(name: str, services: embedded.Services, rate: float, seconds: float, tag: str,
            seed: int) -> dict[str, Any]:
    """One system, fresh, at `rate` documents/s open loop: decision latency."""
    types = openloop.ORDER_TYPES if name == PROJECT else PEER_TYPES
    n = int(rate * seconds / len(types))
    warm = list(generate(50, seed=seed, prefix=f"W{tag[-4:]}", mix={"ok": 1.0}))
    orders = list(generate(n, seed=seed + 1, prefix=f"T{tag[-4:]}", mix={"ok": 1.0}))
    conf = {"bootstrap.servers": services.kafka_bootstrap}
    proc: subprocess.Popen
    if name == PROJECT:
        proc, settings = _start_project(services, tag)
        topics = {t: registry.topic_name(registry.sender_topic(t), settings) for t in types}
        out, partitions = registry.topic_name(registry.DECISIONS, settings), settings.partitions
    else:
        names = [f"{tag}.order", f"{tag}.payment", f"{tag}.logistics"]
        out, partitions = f"{tag}.out", PARTITIONS
        create(services.kafka_bootstrap, names + [out])
        topics = dict(zip(types, names))
        proc = subprocess.Popen(_peer_cmd(name, services.kafka_bootstrap, out, len(warm) + len(orders), names),
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    producer = Producer(dict(conf, **{"linger.ms": "1", "queue.buffering.max.messages": "2000000"}))
    consumer = Consumer(dict(conf, **{"group.id": f"lat-{tag}", "enable.auto.commit": "false",
                                      "fetch.wait.max.ms": "5"}))
    consumer.assign([TopicPartition(out, p, 0) for p in range(partitions)])
    target = openloop.Target(producer, consumer, topics, pids={"system": proc.pid, "generator": os.getpid()})
    try:
        # Warm-up until the system answers: its start-up is not part of the latency.
        openloop.run(target, openloop.build(warm, 1000, 1, "json", 0.0, 0.0, seed, types), 1000, drain_s=120)
        wl = openloop.build(orders, rate, 1, "json", 0.02, 0.0, seed, types)
        res = openloop.run(target, wl, rate, warmup_s=0.1 * wl.seconds, drain_s=60)
    finally:
        consumer.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"system": name, "offered_documents_per_s": round(rate),
            "achieved_documents_per_s": round(res.achieved_documents_per_s), "latency_ms": res.latency_ms(),
            "books": openloop.books(wl, res, exact=True), "cpu_cores": round(res.cpu_s["system"] / res.send_seconds, 2),
            "_hist": res.histogram}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=10000)
    ap.add_argument("--latency-rate", type=float, default=0, help="documents/s offered to every system "
                    "(default: half the project's measured throughput)")
    ap.add_argument("--latency-seconds", type=float, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    services = embedded.start()
    results, lat = [], []
    try:
        orders = list(generate(args.orders, seed=3, prefix="PEER", mix={"ok": 1.0}))
        stamp = int(time.time())
        results.append(project(services, orders, f"pp{stamp}"))
        print(json.dumps(results[-1]), flush=True)
        for i, name in enumerate((QUIX, BARE)):
            results.append(peer(name, services, orders, f"peer{i}{stamp}"))
            print(json.dumps(results[-1]), flush=True)
        rate = args.latency_rate or (results[0]["documents_per_s"] or 100) / 2
        for i, name in enumerate((PROJECT, QUIX, BARE)):
            lat.append(latency(name, services, rate, args.latency_seconds, f"lat{i}{stamp}", 10 + i))
            print(json.dumps({k: v for k, v in lat[-1].items() if k != "_hist"}), flush=True)
    finally:
        services.stop()
    base = results[0]["documents_per_s"] or 0
    lines = ["| system | documents | seconds | documents/s | project ÷ system |", "|---|---|---|---|---|"]
    for r in results:
        ratio = f"{base / r['documents_per_s']:.2f}" if r["documents_per_s"] else "-"
        lines.append(f"| {r['system']} | {r['documents']} | {r['seconds']} | {r['documents_per_s']} | {ratio} |")
    lines += ["", f"Open loop, every system at {rate:,.0f} documents/s for {args.latency_seconds:g} s "
              "(decision latency in ms, HdrHistogram, warm-up excluded):", "",
              "| system | achieved docs/s | p50 | p90 | p99 | p99.9 | max | CPU (cores) | books |", "|---" * 9 + "|"]
    for r in lat:
        ms = r["latency_ms"]
        lines.append(f"| {r['system']} | {r['achieved_documents_per_s']:,} | " + " | ".join(
            str(ms.get(p, "-")) for p in ("p50", "p90", "p99", "p99.9", "max")) +
            f" | {r['cpu_cores']} | {'ok' if r['books']['ok'] else 'FAILED'} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp_s = time.strftime('%Y%m%d-%H%M%S')
    path = out / f"peers-{stamp_s}.md"
    command = "python -m benchmarks.peers.run " + " ".join(sys.argv[1:])
    path.write_text(f"Command: `{command}`\n\nMachine: {report.machine_line()}\n\n{table}\n")
    hist = out / f"peers-{stamp_s}-hist"
    hist.mkdir(exist_ok=True)
    for r in lat:
        (hist / (r["system"].split(" ")[0].lower() + ".hdr")).write_bytes(r.pop("_hist").encode())
    (out / f"peers-{stamp_s}.json").write_text(json.dumps({"command": command, "throughput": results,
                                                           "latency": lat}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
