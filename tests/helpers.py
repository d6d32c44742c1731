"""Test helpers: a capturing output sink for pipeline tests, and builders."""
from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson

from config.settings import Settings
from streams.pipeline import InRecord, Pipeline
from streams.simulator import GeneratedOrder, make_order, to_json, to_xml
from topics import registry


class CaptureSink:
    """Stands in for the Kafka producer in pipeline tests: records what would be sent."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, bytes]] = []

    def produce(self, topic: str, key: str, value: bytes) -> None:
        self.records.append((topic, key, value))

    async def flush(self) -> None:
        return None

    def on(self, spec: registry.TopicSpec) -> list[tuple[str, bytes]]:
        return [(k, v) for t, k, v in self.records if t == spec.name]

    def decisions(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for _, v in self.on(registry.DECISIONS)]


def settings_for(redis_url: str, **kw: Any) -> Settings:
    return dataclasses.replace(Settings(kafka_bootstrap="unused:9092", redis_url=redis_url), **kw)


_offset = 0


def record(doc_type: str, value: bytes, key: bytes | None = b"k", ts: int = 0) -> InRecord:
    global _offset
    _offset += 1
    topic = registry.sender_topic(doc_type).name
    return InRecord(topic, 0, _offset, key, value, ts)


def doc_records(order: GeneratedOrder, types: list[str] | None = None, fmt: str = "json") -> list[InRecord]:
    enc = to_xml if fmt == "xml" else to_json
    return [record(t, enc(t, [order.docs[t]])) for t in (types or list(order.docs))]


def run_pipeline(redis_url: str, batches: list[list[InRecord]], sweep: bool = False, rules: Any = None,
                 reviews: list[list[InRecord]] | None = None, **settings_kw: Any) -> CaptureSink:
    """Process batches in order through a fresh Pipeline on a real Redis."""
    from streams import state

    sink = CaptureSink()

    settings = settings_for(redis_url, **settings_kw)

    async def go() -> None:
        client = state.async_client(redis_url, settings.redis_cluster, settings.redis_cluster_nodes)
        p = Pipeline(settings, client, sink, rules)
        for b in batches:
            await p.process(b)
        for b in reviews or ():
            await p.review(b)
        if sweep:
            await p.sweep_timeouts()
        await p.aclose()
        await client.aclose()

    asyncio.run(go())
    return sink


def order(seq: int = 1, scenario: str = "ok", **kw: Any) -> GeneratedOrder:
    import random

    return make_order(seq, random.Random(seq), scenario, **kw)


def other_platform(o: GeneratedOrder, ebp: str, logistics_no: str) -> GeneratedOrder:
    """The same orderNo declared by another platform, with its own waybill."""
    other = dataclasses.replace(o, docs={t: (dict(head), [dict(x) for x in lines])
                                         for t, (head, lines) in o.docs.items()}, logistics_no=logistics_no)
    for t in ("311", "411", "621"):
        other.docs[t][0]["ebpCode"] = ebp
    for t in ("511", "621"):
        other.docs[t][0]["logisticsNo"] = logistics_no
    other.docs["411"][0]["payTransactionId"] = other.docs["311"][0]["payTransactionId"] = f"PAY-{ebp}-{o.order_no}"
    return other
