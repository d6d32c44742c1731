"""Peer: the matching job as a bare confluent-kafka loop (no framework, no fault tolerance).

Reads the order, payment and waybill topics, keeps the documents per orderNo in
a dict, and produces one decision per complete order. The ceiling a Python
process reaches on this broker.
"""
from __future__ import annotations

import sys
import time

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition


def run(bootstrap: str, topics: list[str], out: str, partitions: int, expected: int) -> float:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "peer-bare", "enable.auto.commit": "false",
                         "fetch.wait.max.ms": "10"})
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(partitions)])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": "5"})
    state: dict[str, set[str]] = {}
    done = 0
    start = 0.0
    while done < expected:
        for msg in consumer.consume(5000, 0.01):  # consume() waits out its timeout on a short batch
            if msg.error():
                continue
            start = start or time.time()  # from the first record: startup is not the job
            doc = orjson.loads(msg.value())
            head = next(iter(doc.values()))
            key = head["orderNo"]
            seen = state.setdefault(key, set())
            seen.add(msg.topic())
            if len(seen) == len(topics):
                producer.produce(out, orjson.dumps({"orderNo": key, "status": 800}), key.encode())
                del state[key]
                done += 1
        producer.poll(0)
    producer.flush(30)
    consumer.close()
    return time.time() - start


if __name__ == "__main__":
    bootstrap, out, partitions, expected, *topics = sys.argv[1:]
    print(run(bootstrap, topics, out, int(partitions), int(expected)))
