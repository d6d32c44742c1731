"""The rules feed on the real broker: a rule set the loader cannot handle
leaves the one in force, and later rule sets still load."""
from __future__ import annotations

import threading
import uuid

import pytest

from config.settings import Settings
from processors import ruleset
from streams import rules_feed
from topics import registry

pytestmark = pytest.mark.integration


def test_a_loader_bug_does_not_end_the_feed(services, monkeypatch):
    settings = Settings(kafka_bootstrap=services.kafka_bootstrap, redis_url=services.redis_url,
                        topic_prefix=f"feed{uuid.uuid4().hex[:8]}.")
    registry.ensure_topics(settings)
    document = ruleset.load_file(ruleset.DEFAULT_RULESET)
    broken, good = dict(document, version="broken"), dict(document, version="good")
    compile_ruleset = ruleset.compile_ruleset

    def flawed(doc):  # stands for a bug in the loader: neither ValueError nor TypeError
        if doc.get("version") == "broken":
            raise KeyError("a bug")
        return compile_ruleset(doc)

    monkeypatch.setattr(ruleset, "compile_ruleset", flawed)
    from confluent_kafka import Producer

    producer = Producer(settings.librdkafka_config())
    for doc in (broken, good):
        producer.produce(registry.topic_name(registry.RULES, settings), rules_feed.encode(doc), b"ruleset")
    producer.flush(10)
    loaded: list[str] = []
    done = threading.Event()

    def on_rules(engine):
        loaded.append(engine.version)
        done.set()

    feed = rules_feed.RulesFeed(settings, on_rules)
    feed.start()
    try:
        assert done.wait(30), "the feed stopped at the record it could not compile"
    finally:
        feed.stopping.set()
        feed.join(10)
    assert loaded == ["good"]
