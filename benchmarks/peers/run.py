"""The same matching job in the project, Quix Streams and a bare confluent-kafka
loop: same broker, same data, same machine, one after the other.

Each system gets a backlog of per-document JSON records keyed by orderNo on
4-partition topics and is timed from its first consumed record to its last
decision. The peers match order + payment + waybill (three documents); the
project runs its match-only configuration (`CLEARANCE_RULES=spine`: the
comparison rules and limits) on the four documents its decision needs,
inventory list included, so it is compared in documents per second.

Usage: python -m benchmarks.peers.run [--orders 10000]   (make bench-peers)
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

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

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


def peer(name: str, services: embedded.Services, orders: list, tag: str) -> dict:
    topics = [f"{tag}.order", f"{tag}.payment", f"{tag}.logistics"]
    out = f"{tag}.out"
    create(services.kafka_bootstrap, topics + [out])
    load(services.kafka_bootstrap, [(topics[i], o.order_no, to_json(t, [o.docs[t]]))
                                    for o in orders for i, t in enumerate(("311", "411", "511"))])
    if name == "bare confluent-kafka loop":
        cmd = [sys.executable, "-m", "benchmarks.peers.bare_loop", services.kafka_bootstrap, out, str(PARTITIONS),
               str(len(orders)), *topics]
    else:
        cmd = [sys.executable, "-m", "benchmarks.peers.quix_app", services.kafka_bootstrap, out, str(len(orders)),
               tempfile.mkdtemp(), *topics]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    seconds = float(done.stdout.strip().splitlines()[-1])
    return {"system": name, "documents": 3 * len(orders), "seconds": round(seconds, 2),
            "documents_per_s": round(3 * len(orders) / seconds)}


def project(services: embedded.Services, orders: list, tag: str) -> dict:
    env = dict(os.environ, **services.env(), CLEARANCE_TOPIC_PREFIX=f"{tag}.", CLEARANCE_GROUP=tag,
               CLEARANCE_RULES="spine", CLEARANCE_SESSION_TIMEOUT_S="6")
    settings = load_settings(env)
    registry.ensure_topics(settings)
    load(services.kafka_bootstrap, [(registry.topic_name(registry.sender_topic(t), settings), o.order_no,
                                     to_json(t, [o.docs[t]])) for o in orders for t in ("311", "411", "511", "621")])
    worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-port", str(embedded.free_port()),
                               "--loglevel", "warn"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=10000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    services = embedded.start()
    results = []
    try:
        orders = list(generate(args.orders, seed=3, prefix="PEER", mix={"ok": 1.0}))
        stamp = int(time.time())
        results.append(project(services, orders, f"pp{stamp}"))
        print(json.dumps(results[-1]), flush=True)
        for i, name in enumerate(("Quix Streams", "bare confluent-kafka loop")):
            results.append(peer(name, services, orders, f"peer{i}{stamp}"))
            print(json.dumps(results[-1]), flush=True)
    finally:
        services.stop()
    base = results[0]["documents_per_s"] or 0
    lines = ["| system | documents | seconds | documents/s | project ÷ system |", "|---|---|---|---|---|"]
    for r in results:
        ratio = f"{base / r['documents_per_s']:.2f}" if r["documents_per_s"] else "-"
        lines.append(f"| {r['system']} | {r['documents']} | {r['seconds']} | {r['documents_per_s']} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(f"Command: `python -m benchmarks.peers.run --orders {args.orders}`\n\n{table}\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
