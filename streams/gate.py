"""Reference warehouse-gate consumer: reads release events, keeps the set of
releasable parcels in Redis (so several gate processes agree), and answers
"may parcel L… leave?".

A release event seen twice changes nothing: the parcel record is written once.
"""
from __future__ import annotations

import logging
import signal
import time
from typing import Any

import orjson
import redis

from config.settings import Settings
from topics import registry

log = logging.getLogger("clearance.gate")

# Record a released parcel once: 1 if new, 0 if already known.
RECORD_RELEASE = """
local k = KEYS[1]
if redis.call('HSETNX', k, 'state', 'releasable') == 0 then return 0 end
redis.call('HSET', k, 'invtNo', ARGV[1], 'orderNo', ARGV[2], 'releasedAt', ARGV[3], 'areaCode', ARGV[4],
           'seenAt', ARGV[5])
redis.call('INCR', KEYS[2])
return 1
"""

RELEASED_COUNT = "clr:gate:{released}"


def parcel_key(logistics_no: str) -> str:
    return "clr:parcel:{" + logistics_no + "}"


def scan(r: Any, logistics_no: str) -> str:
    """release / hold / unknown for one waybill number."""
    state = r.hget(parcel_key(logistics_no), "state")
    if state is None:
        return "unknown"
    return "release" if state == b"releasable" else "hold"


def run_gate(settings: Settings, group: str = "clearance-gate", max_seconds: float | None = None,
             quiet: bool = False) -> int:
    from confluent_kafka import Consumer

    r = redis.Redis.from_url(settings.redis_url)
    record = r.register_script(RECORD_RELEASE)
    conf = settings.librdkafka_config()
    conf.update({"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": "false",
                 "session.timeout.ms": str(int(settings.session_timeout_s * 1000))})
    consumer = Consumer(conf)
    consumer.subscribe([registry.topic_name(registry.RELEASE, settings)])
    stop = {"flag": False}

    def _stop(*_: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()
    new_total = 0
    try:
        while not stop["flag"] and (max_seconds is None or time.monotonic() - started < max_seconds):
            msgs = consumer.consume(500, 0.5)
            if not msgs:
                continue
            pipe = r.pipeline(transaction=False)
            now = int(time.time() * 1000)
            for msg in msgs:
                if msg.error():
                    continue
                try:
                    ev = orjson.loads(msg.value())
                    record(keys=[parcel_key(ev["logisticsNo"]), RELEASED_COUNT],
                           args=[ev.get("invtNo", ""), ev.get("orderNo", ""), ev.get("releasedAt", 0),
                                 ev.get("areaCode", ""), now], client=pipe)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    log.warning("ignoring malformed release event at offset %s", msg.offset())
            new = sum(int(x) for x in pipe.execute())
            new_total += new
            consumer.commit(asynchronous=False)
            if not quiet and new:
                print(f"gate: {new} parcels releasable (+{len(msgs) - new} duplicates ignored)", flush=True)
    finally:
        consumer.close()
    return new_total
