"""Output to Kafka with confluent-kafka: batched produce, one flush per batch.

librdkafka batches and compresses in C; the worker hands it every record of a
consumed batch and waits for all deliveries before the batch is acknowledged,
so an offset is committed only after its effects are on the broker.
"""
from __future__ import annotations

import asyncio
import logging

from confluent_kafka import KafkaException, Producer

from config.settings import Settings
from streams import metrics as m

log = logging.getLogger("clearance.output")


class KafkaSink:
    def __init__(self, settings: Settings, **overrides: str):
        conf = settings.librdkafka_config()
        conf.update({
            "linger.ms": "2",
            "batch.num.messages": "10000",
            "compression.type": "lz4",
            "acks": "all",
            "enable.idempotence": "false",
            "message.timeout.ms": str(settings.produce_timeout_ms),
        })
        conf.update(overrides)
        self.producer = Producer(conf)
        self._failed: list[tuple[str, bytes, bytes]] = []
        # One flush at a time (batches in flight, the timeout sweep): a flush
        # returns once every record produced before it began is delivered, and
        # the failures its delivery reports carry are re-sent by that flush.
        self._flushing = asyncio.Lock()

    def _on_delivery(self, err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            m.ERRORS.labels("produce_failed").inc()
            self._failed.append((msg.topic(), msg.key(), msg.value()))

    def produce(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value, key.encode("utf-8"), on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full: let librdkafka drain it
                self.producer.poll(0.05)
            except KafkaException:
                raise

    async def flush(self) -> None:
        """Wait until every record is delivered; re-send failed ones until they are."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        backoff = 0.1
        while True:
            remaining = await asyncio.to_thread(self.producer.flush, 30)
            if remaining == 0 and not self._failed:
                return
            failed, self._failed = self._failed, []
            if failed:
                log.warning("re-sending %d records after delivery errors", len(failed))
                m.RETRIES.labels("produce").inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                for topic, key, value in failed:
                    self.produce(topic, key.decode("utf-8") if key else "", value)

    def close(self) -> None:
        self.producer.flush(10)
