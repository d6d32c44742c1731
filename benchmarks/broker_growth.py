"""How the embedded broker's cost grows with what it holds.

One partition on a fresh Tansu; a consumer at the end offset (fetch wait
20 ms, as the workers use) while one record at a time is produced and read
back. Measured fresh, then after the partition holds more and more records
written in small batches (2 records per produce request, as per-document
traffic writes them). Prints, per state, the broker's CPU while the consumer
polls and the produce → consume latency.

Usage: python -m benchmarks.broker_growth [--batches 5000,15000] [--per-batch 2]
"""
from __future__ import annotations

import argparse
import time

import psutil
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams import embedded


def probe(bootstrap: str, broker: psutil.Process, producer: Producer, label: str, seconds: float = 6.0) -> dict:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"growth-{label}", "fetch.wait.max.ms": 20,
                         "enable.auto.commit": False})
    _, high = consumer.get_watermark_offsets(TopicPartition("growth", 0), timeout=5)
    consumer.assign([TopicPartition("growth", 0, high)])
    consumer.poll(1.0)
    cpu0, t0 = broker.cpu_times(), time.time()
    latencies = []
    while time.time() - t0 < seconds:
        sent = time.time()
        producer.produce("growth", b"x" * 900)
        producer.flush()
        while True:
            m = consumer.poll(1.0)
            if m is not None and not m.error():
                latencies.append((time.time() - sent) * 1000)
                break
        time.sleep(0.05)
    cpu1, elapsed = broker.cpu_times(), time.time() - t0
    consumer.close()
    latencies.sort()
    return {"records_held": high, "broker_cores": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / elapsed, 2),
            "p50_ms": round(latencies[len(latencies) // 2], 1), "p90_ms": round(latencies[int(len(latencies) * 0.9)], 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="5000,15000", help="stored produce requests at each measurement")
    ap.add_argument("--per-batch", type=int, default=2, help="records per produce request")
    args = ap.parse_args()
    services = embedded.start()
    try:
        bootstrap = services.kafka_bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("growth", 1, 1)])["growth"].result()
        broker = psutil.Process(services.procs[0].pid)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        rows = [("fresh", probe(bootstrap, broker, producer, "fresh"))]
        written = 0
        for target in (int(x) for x in args.batches.split(",")):
            while written < target:
                for _ in range(args.per_batch):
                    producer.produce("growth", b"y" * 900)
                producer.flush()
                written += 1
            rows.append((f"{written:,} batches of {args.per_batch}", probe(bootstrap, broker, producer, str(written))))
        print("| state | records held | broker CPU while one consumer polls (cores) | produce → consume p50 / p90 (ms) |")
        print("|---|---|---|---|")
        for label, r in rows:
            print(f"| {label} | {r['records_held']:,} | {r['broker_cores']} | {r['p50_ms']} / {r['p90_ms']} |")
    finally:
        services.stop()


if __name__ == "__main__":
    main()
