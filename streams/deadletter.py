"""The dead-letter topic: what the worker writes there, and the operator's
tools to read it and to replay records once their cause is fixed.

A dead-letter record keeps the rejected input exactly as it came (key and
value, base64), where it came from and why it was refused. Replaying sends
that key and value back to the inbound topic it came from; the worker then
handles it like any record, and matching makes a document that arrives twice
change nothing. Each replayed dead letter is remembered in Redis, so running
the same replay again sends nothing twice unless asked to.
"""
from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from config.settings import Settings
from streams import state
from topics import ceb, registry

# Hash per dead-letter topic: "partition:offset" -> when it was replayed (ms) and to
# which topic. It lives a little longer than the topic keeps its records.
REPLAYED_TTL_MS = registry.DEADLETTER.retention_ms + 5 * 24 * 3600 * 1000
REPLAY_HEADER = "clearance-replay-of"


# The Data of a DxpMsg envelope: the message it carries, in Base64. Found by
# pattern, not by parsing: a dead letter is often not well-formed.
_DXP_DATA = re.compile(rb"(<(?:[\w.-]+:)?Data\b[^>]*>)([^<]*)(</(?:[\w.-]+:)?Data>)")


def readable(value: bytes) -> str:
    """A rejected record as text for an operator: the message inside a DxpMsg
    envelope shown decoded after the envelope (so that personal data in it can
    be masked like any other), Data that is not Base64 summarised."""
    found = _DXP_DATA.search(value) if ceb.looks_enveloped(value) else None
    if found is None:
        return value.decode("utf-8", "replace")
    try:
        inner = binascii.a2b_base64(found.group(2))
    except binascii.Error:
        inner = None
    shown = value[:found.start(2)] + b"..." + value[found.end(2):]
    text = shown.decode("utf-8", "replace")
    if inner is None:
        return text + f"\n[Data: {len(found.group(2))} characters, not Base64]"
    return text + "\n[Data, decoded from Base64:]\n" + inner.decode("utf-8", "replace")


def record(topic: str, partition: int, offset: int, timestamp_ms: int, key: bytes | None, value: bytes,
           reason: str, status: str, info: str, message_type: str, now_ms: int,
           envelope: ceb.Envelope | None = None) -> bytes:
    """The dead-letter record of one rejected inbound record; `envelope`: what
    its DxpMsg said (copMsgId, senderId), when it could be read. A sender asks
    about a refused message by its CopMsgId (its CEB900's oriCopMsgId)."""
    out: dict[str, Any] = {
        "source": {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp_ms},
        "reason": reason, "returnStatus": status, "info": info, "messageType": message_type,
        "key": base64.b64encode(key).decode() if key else None,
        "value": base64.b64encode(value).decode(),
        "rejectedAt": now_ms,
    }
    if envelope is not None:
        out["envelope"] = {"copMsgId": envelope.cop_msg_id, "senderId": envelope.sender_id}
    return orjson.dumps(out)


@dataclass(frozen=True)
class DeadLetter:
    partition: int  # of the dead-letter topic
    offset: int
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def key(self) -> bytes | None:
        k = self.record.get("key")
        return base64.b64decode(k) if k else None

    @property
    def value(self) -> bytes:
        return base64.b64decode(self.record.get("value") or "")

    @property
    def source(self) -> str:
        s = self.record.get("source", {})
        return f"{s.get('topic')}:{s.get('partition')}:{s.get('offset')}"


def read(settings: Settings, quiet_s: float = 1.0, timeout_s: float = 60.0) -> list[DeadLetter]:
    """Every dead letter the topic holds now, oldest rejection first.

    Reads every partition from its start until each has reached the end it
    had when reading began and nothing more arrived for `quiet_s`. The end
    alone is not enough: the embedded broker (Tansu 0.6) reports a
    partition's end as its count of produce batches, short of the last record
    when a producer batched several (see docs/operations.md)."""
    from confluent_kafka import Consumer, TopicPartition

    conf = settings.librdkafka_config()
    conf.update({"group.id": "clearance-deadletter-tool", "enable.auto.commit": "false"})
    consumer = Consumer(conf)
    topic = registry.topic_name(registry.DEADLETTER, settings)
    out: list[DeadLetter] = []
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return out
        ends: dict[int, int] = {}
        starts = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            starts.append(TopicPartition(topic, p, low))
            if high > low:
                ends[p] = high
        consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while time.monotonic() - last < quiet_s or ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: partitions {sorted(ends)} not read to their end")
            for msg in consumer.consume(500, 0.2):
                if msg.error():
                    continue
                last = time.monotonic()
                try:
                    rec = orjson.loads(msg.value() or b"")
                except orjson.JSONDecodeError:
                    rec = None
                if not isinstance(rec, dict) or not isinstance(rec.get("source", {}), dict):
                    rec = {"reason": "unreadable_dead_letter", "info": "not a dead-letter record"}
                out.append(DeadLetter(msg.partition(), msg.offset(), rec))
                if msg.offset() >= ends.get(msg.partition(), 0) - 1:
                    ends.pop(msg.partition(), None)
    finally:
        consumer.close()
    out.sort(key=lambda d: (int(d.record.get("rejectedAt") or 0), d.partition, d.offset))
    return out


def select(letters: list[DeadLetter], reasons: list[str] | None = None, source: str | None = None,
           ids: list[str] | None = None, since_ms: int | None = None,
           message: str | None = None) -> list[DeadLetter]:
    """The dead letters that match every filter given (`message`: a DxpMsg's CopMsgId)."""
    out = []
    for d in letters:
        if message and (d.record.get("envelope") or {}).get("copMsgId") != message:
            continue
        if reasons and d.record.get("reason") not in reasons:
            continue
        if source and not str(d.record.get("source", {}).get("topic", "")).endswith(source):
            continue
        if ids and d.id not in ids:
            continue
        if since_ms is not None and int(d.record.get("rejectedAt") or 0) < since_ms:
            continue
        out.append(d)
    return out


@dataclass
class ReplayResult:
    sent: list[DeadLetter]
    already: list[DeadLetter]  # replayed before (skipped unless again=True)
    refused: list[tuple[DeadLetter, str]]  # cannot be replayed, and why


def replay(settings: Settings, letters: list[DeadLetter], redis_client: Any, again: bool = False,
           dry_run: bool = False) -> ReplayResult:
    """Send each dead letter's original key and value back to its inbound topic."""
    inbound = registry.inbound_by_name(settings)
    result = ReplayResult([], [], [])
    replayed_key = replayed_key_for(settings)
    done = redis_client.hmget(replayed_key, [d.id for d in letters]) if letters else []
    todo = []
    for d, previous in zip(letters, done):
        topic = d.record.get("source", {}).get("topic")
        if topic not in inbound:
            # Only inbound topics: a record must not be replayed onto an output or control topic.
            result.refused.append((d, f"source topic {topic!r} is not an inbound topic of this deployment"))
        elif not d.record.get("value"):
            result.refused.append((d, "the record holds no original value"))
        elif previous is not None and not again:
            result.already.append(d)
        else:
            todo.append((d, topic))
    if dry_run or not todo:
        result.sent = [d for d, _ in todo]
        return result
    from confluent_kafka import Producer

    producer = Producer(settings.librdkafka_config())
    failed: dict[str, str] = {}

    def delivered(d: DeadLetter) -> Any:
        def cb(err: Any, _msg: Any) -> None:
            if err is not None:
                failed[d.id] = str(err)
        return cb

    for d, topic in todo:
        producer.produce(topic, key=d.key, value=d.value, headers=[(REPLAY_HEADER, d.id.encode())],
                         on_delivery=delivered(d))
        producer.poll(0)
    left = producer.flush(30)
    if left:
        raise RuntimeError(f"{left} replayed records not acknowledged by the broker within 30 s")
    now = int(time.time() * 1000)
    for d, topic in todo:
        if d.id in failed:
            result.refused.append((d, f"not delivered: {failed[d.id]}"))
        else:
            result.sent.append(d)
    if result.sent:
        redis_client.hset(replayed_key, mapping={d.id: f"{now} {d.record['source']['topic']}" for d in result.sent})
        redis_client.pexpire(replayed_key, REPLAYED_TTL_MS)
    return result


def replayed_key_for(settings: Settings) -> str:
    return state.replayed_key(registry.topic_name(registry.DEADLETTER, settings))
