"""Several workers in one group, and a worker killed and replaced."""
from __future__ import annotations

import re
import signal
import time

import orjson
import pytest

from streams.simulator import Publisher, generate, to_json, to_xml
from tests.integration.worker import Env, Reader
from topics import registry

pytestmark = pytest.mark.integration


def consumed(metrics: str) -> float:
    return sum(float(v) for v in re.findall(r'^clearance_documents_consumed_total\{[^}]*\} (\S+)$', metrics, re.M))


def lag_series(metrics: str) -> list[tuple[str, str]]:
    return re.findall(r'^clearance_consumer_lag_records\{partition="(\d+)",topic="([^"]+)"\}', metrics, re.M)


def lag_reported_once(env: Env) -> bool:
    """Each inbound partition's lag is reported by the worker holding it, and
    by it alone: a worker drops the series of a partition given away (its lag
    is read every 2 s) rather than keep its last values beside the new owner's."""
    topics = {registry.topic_name(t, env.settings) for t in registry.INBOUND}
    every = sorted((str(p), t) for t in topics for p in range(env.settings.partitions))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        each = [[s for s in lag_series(env.metrics(i)) if s[1] in topics] for i in range(len(env.workers))]
        if all(each) and sorted(s for mine in each for s in mine) == every:
            return True
        time.sleep(0.5)
    return False


def test_two_workers_share_the_load_and_every_order_gets_one_decision(services):
    env = Env(services)
    try:
        # Three platforms: orderNos recur across them, each platform's order decided once.
        orders = [o for o in generate(400, seed=21, prefix="TWO", platforms=3,
                                      mix={"ok": 0.9, "amount_mismatch": 0.1})]
        pub = Publisher(env.settings, "json", batch=1, duplicate_rate=0.05)
        decisions = Reader(env, registry.DECISIONS)
        # The first holds every partition and decides a first part; then it gives
        # half of them to the second, and the rest is shared.
        env.start_worker()
        env.wait_assigned(expected_total=env.settings.partitions * len(registry.INBOUND), timeout=90)
        pub.send(orders[:100])
        pub.flush()
        decisions.read_until(lambda r: len(r) >= 100, timeout=90)
        env.start_worker()
        env.wait_assigned(expected_total=env.settings.partitions * len(registry.INBOUND), timeout=90)
        assert lag_reported_once(env)
        pub.send(orders[100:])
        pub.flush()
        records = decisions.read_until(lambda r: len(r) >= len(orders), timeout=90)
        ids = [orjson.loads(v)["decisionId"] for _, v in records]
        assert len(ids) == len(set(ids)) == len(orders)
        by_id = {orjson.loads(v)["decisionId"]: orjson.loads(v)["status"] for _, v in records}
        assert all(by_id[f"{o.ebp_code}:{o.order_no}"] == o.expected_status for o in orders)
        assert consumed(env.metrics(0)) > 0 and consumed(env.metrics(1)) > 0
        assert lag_reported_once(env)
    finally:
        env.stop()


def test_the_broker_is_asked_for_the_partitions_ends(services):
    """The lag's end does not hang on the worker's fetcher: it is read from the
    broker itself (records produced one per request: the embedded broker
    counts produce requests as its end)."""
    import asyncio

    from confluent_kafka import Producer

    from config.settings import Settings
    from streams.lag import BrokerEnds

    env = Env(services)
    topic = registry.topic_name(registry.INBOUND[0], env.settings)
    producer = Producer(env.settings.librdkafka_config())
    for partition, n in ((0, 3), (2, 5)):
        for _ in range(n):
            producer.produce(topic, key=b"k", value=b"{}", partition=partition)
            producer.flush(10)
    ends = BrokerEnds(env.settings, every_s=60)
    wanted = [(topic, p) for p in range(env.settings.partitions)]
    assert asyncio.run(ends.refresh(wanted)) == {(topic, 0): 3, (topic, 1): 0, (topic, 2): 5, (topic, 3): 0}
    producer.produce(topic, key=b"k", value=b"{}", partition=1)
    producer.flush(10)
    assert asyncio.run(ends.refresh(wanted))[(topic, 1)] == 0  # not read again within its interval
    ends.next_read = 0
    assert asyncio.run(ends.refresh(wanted))[(topic, 1)] == 1
    # A broker that cannot be reached: nothing read, and no error.
    away = BrokerEnds(Settings(kafka_bootstrap="127.0.0.1:9", redis_url="unused"), timeout_s=0.5)
    assert asyncio.run(away.refresh(wanted)) == {}


def test_state_survives_a_killed_worker(services):
    env = Env(services)
    try:
        env.start_worker()
        env.wait_assigned()
        orders = list(generate(100, seed=22, prefix="KILL", mix={"ok": 1.0}))
        first = {t: [o.docs[t] for o in orders] for t in ("311", "411")}
        pub = Publisher(env.settings, "xml", batch=50)
        for t, docs in first.items():
            for i in range(0, len(docs), 50):
                pub.send_raw(t, f"{t}-{i}", to_xml(t, docs[i:i + 50]))
        pub.flush()
        deadline = time.monotonic() + 30
        while consumed(env.metrics(0)) < 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        env.kill(0, signal.SIGKILL)  # no shutdown: whatever was in flight is lost with the process
        env.start_worker()
        env.wait_assigned(timeout=90)
        pub2 = Publisher(env.settings, "json", batch=1)
        for o in orders:
            for t in ("511", "621"):
                pub2.send_raw(t, o.order_no, to_json(t, [o.docs[t]]))
        pub2.flush()
        records = Reader(env, registry.DECISIONS).read_until(lambda r: len(r) >= len(orders), timeout=90)
        ids = [orjson.loads(v)["decisionId"] for _, v in records]
        assert len(set(ids)) == len(orders)
        assert all(orjson.loads(v)["status"] == 800 for _, v in records)
    finally:
        env.stop()


def lag(metrics: str) -> float:
    return sum(float(v) for v in re.findall(r'^clearance_consumer_lag_records\{[^}]*\} (\S+)$', metrics, re.M))


def test_batches_in_flight_together_still_give_one_decision_per_order_and_commit_everything(services):
    # Small batches, three in flight: the completions (acks, progress) must come in
    # order and every order still gets exactly its one expected decision.
    env = Env(services, CLEARANCE_INFLIGHT_BATCHES="3", CLEARANCE_BATCH_MAX="20")
    try:
        env.start_worker()
        env.wait_assigned()
        orders = list(generate(300, seed=23, prefix="FLY", mix={"ok": 0.8, "amount_mismatch": 0.1,
                                                               "buyer_not_payer": 0.1}))
        pub = Publisher(env.settings, "json", batch=1, duplicate_rate=0.05)
        pub.send(orders)
        pub.flush()
        records = Reader(env, registry.DECISIONS).read_until(lambda r: len(r) >= len(orders), timeout=90)
        by_id: dict[str, list[int]] = {}
        for _, v in records:
            d = orjson.loads(v)
            by_id.setdefault(d["decisionId"], []).append(d["status"])
        assert sorted(by_id) == sorted(f"4601XXXXAA:{o.order_no}" for o in orders)
        wrong = {o.order_no: (o.scenario, o.expected_status, by_id[f"4601XXXXAA:{o.order_no}"]) for o in orders
                 if by_id[f"4601XXXXAA:{o.order_no}"] != [o.expected_status]}
        assert not wrong
        # The lag gauge is refreshed every 2 s, once the consumer knows the partitions' ends.
        deadline = time.monotonic() + 30
        text = env.metrics(0)
        while (not re.search(r'^clearance_consumer_lag_records\{', text, re.M) or lag(text) > 0) and \
                time.monotonic() < deadline:
            time.sleep(0.5)
            text = env.metrics(0)
        assert re.search(r'^clearance_consumer_lag_records\{', text, re.M)
        assert lag(text) == 0  # every consumed offset committed: no gap left behind
    finally:
        env.stop()
