"""Live rule changes: every worker reads the whole compacted rules topic.

A background thread consumes `clearance.rules` without a consumer group
(each worker must see every rule set, not a share of them), validates and
compiles each record, and hands a good one to the event loop, which swaps
the pipeline's rule set between two batches. A bad rule set is logged,
counted, and ignored: the one in force stays.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import orjson

from config.settings import Settings
from processors import decide, ruleset
from streams import metrics as m
from topics import registry

log = logging.getLogger("clearance.rules")


def initial_rules(settings: Settings) -> Any:
    """The rule set a worker starts with: CLEARANCE_RULES, else the default file."""
    if settings.rules == "spine":
        return decide.SpineRules()
    return ruleset.load(settings.rules or ruleset.DEFAULT_RULESET)


def encode(document: dict[str, Any], by: str = "") -> bytes:
    return orjson.dumps({"document": document, "pushedAt": int(time.time() * 1000), "by": by})


def decode(value: bytes) -> Any:
    """Compile a rules-topic record; raises RuleSetError (or ValueError) if bad."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ruleset.RuleSetError(f"rules record is not JSON: {exc}") from None
    if not isinstance(record, dict) or "document" not in record:
        raise ruleset.RuleSetError("rules record needs a 'document'")
    return ruleset.compile_ruleset(record["document"])


class RulesFeed(threading.Thread):
    def __init__(self, settings: Settings, on_rules: Callable[[Any], None]):
        super().__init__(daemon=True, name="rules-feed")
        self.settings = settings
        self.on_rules = on_rules
        self.caught_up = threading.Event()  # set once the topic has been read to its end
        self.stopping = threading.Event()

    def run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        conf = self.settings.librdkafka_config()
        conf.update({"group.id": "clearance-rules-reader", "enable.auto.commit": "false",
                     "fetch.wait.max.ms": "100"})
        consumer = Consumer(conf)
        topic = registry.topic_name(registry.RULES, self.settings)
        tp = TopicPartition(topic, 0, 0)
        consumer.assign([tp])
        try:
            _low, high = consumer.get_watermark_offsets(tp, timeout=10)
        except Exception:
            high = 0
        if high <= 0:
            self.caught_up.set()
        latest = None
        while not self.stopping.is_set():
            for msg in consumer.consume(100, 0.2):
                if msg.error():
                    continue
                try:
                    engine = decode(msg.value())
                except (ValueError, TypeError) as exc:
                    m.RULESET_LOADS.labels("rejected").inc()
                    log.error("rule set at offset %d rejected, the one in force stays: %s", msg.offset(), exc)
                except Exception:  # a loader bug must not end the feed: later rule sets still load
                    m.RULESET_LOADS.labels("rejected").inc()
                    log.exception("rule set at offset %d could not be compiled, the one in force stays",
                                  msg.offset())
                else:
                    latest = engine
                if msg.offset() + 1 >= high:
                    self.caught_up.set()
            if latest is not None and self.caught_up.is_set():
                m.RULESET_LOADS.labels("accepted").inc()
                self.on_rules(latest)
                latest = None
        consumer.close()
