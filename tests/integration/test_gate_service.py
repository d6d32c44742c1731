"""The gate service's consumer: a record on the release topic it cannot apply
is skipped, and a Redis outage is waited out, with nothing committed before
the events are applied."""
from __future__ import annotations

import dataclasses
import signal
import threading
import uuid

import orjson
import pytest

from config.settings import Settings
from streams.embedded import free_port, start_redis
from streams import gate as gate_module
from streams import metrics as m
from streams.gate import Gate, event_problem, run_gate
from topics import registry

pytestmark = pytest.mark.integration


def _gauge_max(name: str) -> float:
    return max((s.value for family in m.GATE_REGISTRY.collect() for s in family.samples if s.name == name),
               default=0.0)


def test_malformed_release_events_are_skipped_and_a_redis_outage_is_waited_out(services, tmp_path, monkeypatch):
    from confluent_kafka import Producer

    monkeypatch.setattr(gate_module, "PENDING_SWEEP_S", 1.0)  # the lag is read every second
    port = free_port()
    settings = dataclasses.replace(Settings(kafka_bootstrap=services.kafka_bootstrap,
                                            redis_url=f"redis://127.0.0.1:{port}/0"),
                                   topic_prefix=f"gs{uuid.uuid4().hex[:6]}.")
    registry.ensure_topics(settings)
    good = {"logisticsNo": "YT-GOOD-1", "orderNo": "O-1", "invtNo": "I-1", "areaCode": "4601XXXXWW", "billNo": "",
            "releasedAt": 1, "status": 800}
    bad = [b"not json", b"[]", b"7", orjson.dumps({"logisticsNo": ["YT"]}), orjson.dumps({"logisticsNo": ""}),
           orjson.dumps({"logisticsNo": "YT\x00"}), orjson.dumps({"logisticsNo": "YT-2", "releasedAt": "soon"}),
           orjson.dumps({"logisticsNo": "YT-3", "orderNo": {"a": 1}}), None]
    producer = Producer(settings.librdkafka_config())
    topic = registry.topic_name(registry.RELEASE, settings)
    for value in [*bad, orjson.dumps(good)]:
        producer.produce(topic, value, b"k")  # one key: one partition, in this order
    assert producer.flush(10) == 0
    counted = {result: m.GATE_RELEASE_EVENTS.labels(result)._value.get() for result in ("ignored", "releasable")}
    redis_errors = m.GATE_DEPENDENCY_ERRORS.labels("redis")._value.get()
    # Redis comes up only once the lag gauges have shown the events read and not
    # applied for a while (or after 10 s, and the assertions below fail).
    redis: dict = {}
    lock = threading.Lock()

    def start() -> None:
        with lock:
            if "proc" not in redis:
                redis["proc"] = start_redis(str(tmp_path), port)[1]

    later = threading.Timer(10.0, start)
    later.start()
    seen = {"records": 0.0, "seconds": 0.0}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            seen["records"] = max(seen["records"], _gauge_max("clearance_gate_release_lag_records"))
            seen["seconds"] = max(seen["seconds"], _gauge_max("clearance_gate_release_lag_seconds"))
            if seen["records"] and seen["seconds"] and "proc" not in redis:
                start()

    watcher = threading.Thread(target=watch)
    watcher.start()
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert run_gate(settings, group="gs", max_seconds=16, quiet=True) == 1
        assert Gate(settings).scan("YT-GOOD-1")["answer"] == "release"
        for ln in ("YT-2", "YT-3"):
            assert Gate(settings).scan(ln)["answer"] == "unknown"
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        later.cancel()
        later.join()
        if "proc" in redis:
            redis["proc"].terminate()
            redis["proc"].wait(10)
    assert m.GATE_RELEASE_EVENTS.labels("ignored")._value.get() - counted["ignored"] == len(bad)
    assert m.GATE_RELEASE_EVENTS.labels("releasable")._value.get() - counted["releasable"] == 1
    assert m.GATE_DEPENDENCY_ERRORS.labels("redis")._value.get() > redis_errors
    # While Redis was down the good record was read but not applied, nor committed
    # (the bad ones before it may have been, in a batch of their own): the lag
    # counted it, and how long the gate had been behind; once applied, nothing.
    assert 1 <= seen["records"] <= 10 and seen["seconds"] > 0
    assert _gauge_max("clearance_gate_release_lag_records") == 0
    assert _gauge_max("clearance_gate_release_lag_seconds") == 0


@pytest.mark.parametrize("event, why", [
    ([], "not a JSON object"), (None, "not a JSON object"), ({}, "logisticsNo"), ({"logisticsNo": 5}, "logisticsNo"),
    ({"logisticsNo": "Y" * 61}, "logisticsNo"), ({"logisticsNo": "YT\n1"}, "logisticsNo"),
    ({"logisticsNo": "YT1", "invtNo": [1]}, "invtNo"), ({"logisticsNo": "YT1", "revokedAt": -1}, "revokedAt"),
    ({"logisticsNo": "YT1", "releasedAt": True}, "releasedAt"), ({"logisticsNo": "YT1", "releasedAt": 1.5}, "releasedAt"),
])
def test_what_a_gate_cannot_apply_is_named(event, why):
    assert why in event_problem(event)
    assert event_problem({"logisticsNo": "YT1", "orderNo": "O1", "releasedAt": 1, "status": 800}) == ""
