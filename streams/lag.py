"""How far a consumer trails its partitions, in records and seconds: the
bookkeeping the worker's clearance_consumer_lag_* and the gate service's
clearance_gate_release_lag_* gauges share, and the log-end offsets asked of
the broker itself.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Hashable, Iterable, Mapping

log = logging.getLogger("clearance.lag")


class LagBook:
    """Per partition held: when this process took it, and the newest record
    time it had processed then. A partition behind with nothing processed
    since counts its seconds from when it was taken, rather than showing 0 (a
    consumer stuck from the start would look caught up) or counting from a
    record processed before it was last given away."""

    def __init__(self) -> None:
        self.held_since_ms: dict[Hashable, int] = {}
        self.baseline_ms: dict[Hashable, int] = {}

    def hold(self, now_ms: int, held: Iterable[Hashable], newest_ms: Mapping[Hashable, int] | None = None
             ) -> list[Hashable]:
        """The partitions held now, and the newest record time processed from
        each so far; returns those held before and no longer (moved to another
        consumer: their gauges are to be removed, not left at their last values
        beside the new owner's)."""
        held = set(held)
        for key in held - self.held_since_ms.keys():
            self.held_since_ms[key] = now_ms
            self.baseline_ms[key] = (newest_ms or {}).get(key, 0)
        gone = [key for key in self.held_since_ms if key not in held]
        for key in gone:
            del self.held_since_ms[key], self.baseline_ms[key]
        return gone

    def behind(self, key: Hashable, now_ms: int, end: int, done: int, newest_ms: int = 0) -> tuple[int, float]:
        """Records between the partition's end and the offset `done` (the next
        to process), and while there are any, seconds since the newest record
        processed was written or, if none was processed since this process
        took the partition, since it took it."""
        records = max(end - done, 0)
        if not records:
            return 0, 0.0
        since = newest_ms if newest_ms > self.baseline_ms.get(key, 0) else self.held_since_ms.get(key, now_ms)
        return records, max(now_ms - since, 0) / 1000


def drop_series(gauges: Iterable[Any], *labels: str) -> None:
    """Remove one label set from each gauge, where it was ever set."""
    for gauge in gauges:
        try:
            gauge.remove(*labels)
        except KeyError:
            pass


class BrokerEnds:
    """Partitions' log-end offsets asked of the broker (one ListOffsets
    request), at most every `every_s`. A consumer's own high watermark comes
    from its last fetch: it stands still when the fetching does, and a lag
    computed from it alone would show a stuck consumer as caught up."""

    def __init__(self, settings: Any, every_s: float = 10.0, timeout_s: float = 2.0):
        self.settings, self.every_s, self.timeout_s = settings, every_s, timeout_s
        self.ends: dict[tuple[str, int], int] = {}
        self.next_read = 0.0
        self._admin: Any = None

    async def refresh(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The ends as last read, read again first when due (on a thread: the
        event loop goes on meanwhile). A failed read keeps the ends before it:
        an unreachable broker is reported by the batch path."""
        if partitions and time.monotonic() >= self.next_read:
            self.next_read = time.monotonic() + self.every_s
            try:
                self.ends = await asyncio.to_thread(self.read, partitions)
            except Exception as exc:
                log.debug("log-end offsets not read: %s", exc)
        return self.ends

    def read(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import AdminClient, OffsetSpec

        if self._admin is None:
            self._admin = AdminClient(self.settings.librdkafka_config())
        futures = self._admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions},
                                           request_timeout=self.timeout_s)
        return {(tp.topic, tp.partition): f.result(timeout=self.timeout_s).offset for tp, f in futures.items()}


def group_has_consumed(settings: Any, timeout_s: float = 10.0) -> bool | None:
    """Whether the worker group has committed an offset on any inbound topic
    (None: the broker did not say). Asked once at a worker's start, without
    joining the group: a Redis keyspace found empty then was emptied, if the
    group had consumed before (Pipeline._check_keyspace)."""
    from confluent_kafka import Consumer, TopicPartition

    from topics import registry

    conf = settings.librdkafka_config()
    conf.update({"group.id": settings.consumer_group, "enable.auto.commit": "false"})
    consumer = Consumer(conf)
    try:
        names = [registry.topic_name(t, settings) for t in registry.INBOUND]
        metadata = consumer.list_topics(timeout=timeout_s).topics
        partitions = [TopicPartition(n, p) for n in names if n in metadata for p in metadata[n].partitions]
        if not partitions:
            return False
        return any(tp.offset >= 0 for tp in consumer.committed(partitions, timeout=timeout_s))
    except Exception as exc:
        log.warning("could not read the group's committed offsets: %s", exc)
        return None
    finally:
        consumer.close()
