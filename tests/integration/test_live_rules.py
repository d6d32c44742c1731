"""Rule changes without a restart, refused rule sets, explain and review, on real workers."""
from __future__ import annotations

import time

import orjson
import pytest

from streams.simulator import Publisher, generate, make_order
from tests.integration.worker import Env, Reader, rules_file
from topics import registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(services):
    e = Env(services)
    e.start_worker()
    e.wait_assigned()
    yield e
    e.stop()


def publish(env, orders):
    pub = Publisher(env.settings, "json", batch=1)
    pub.send(orders)
    pub.flush()


def decided(env, orders, timeout=60):
    wanted = {o.order_no for o in orders}
    reader = Reader(env, registry.DECISIONS)
    records = reader.read_until(lambda r: wanted <= {orjson.loads(v)["orderNo"] for _, v in r}, timeout)
    reader.close()
    return {d["orderNo"]: d for d in (orjson.loads(v) for _, v in records) if d["orderNo"] in wanted}


def test_rule_set_change_takes_effect_live_and_a_bad_one_is_refused(env):
    before = list(generate(5, seed=31, prefix="LIVEA", mix={"ok": 1.0}))
    publish(env, before)
    assert {d["ruleSetVersion"] for d in decided(env, before).values()} == {"test-1"}

    # Version 2: every order with a dutiable price over ¥1 goes to manual review.
    push = env.cli("rules", "push", rules_file("test-2", velocity_amount_24h=0.5))
    assert push.returncode == 0, push.stderr
    time.sleep(2)
    after = list(generate(5, seed=32, prefix="LIVEB", mix={"ok": 1.0}))
    publish(env, after)
    got = decided(env, after)
    assert {d["ruleSetVersion"] for d in got.values()} == {"test-2"}
    assert {d["status"] for d in got.values()} == {300}

    # A broken rule set is refused by `rules push`, and by the workers if it reaches the topic anyway.
    bad = rules_file("test-3")
    doc = orjson.loads(open(bad, "rb").read())
    doc["rules"][0]["when"] = {"fact": "no_such_fact", "op": "gt", "value": 1}
    open(bad, "wb").write(orjson.dumps(doc))
    refused = env.cli("rules", "push", bad)
    assert refused.returncode != 0 and "unknown fact 'no_such_fact'" in refused.stderr
    from confluent_kafka import Producer

    producer = Producer(env.settings.librdkafka_config())
    producer.produce(env.topic(registry.RULES), orjson.dumps({"document": doc}), b"ruleset")
    producer.flush(10)
    time.sleep(2)
    later = list(generate(3, seed=33, prefix="LIVEC", mix={"ok": 1.0}))
    publish(env, later)
    assert {d["ruleSetVersion"] for d in decided(env, later).values()} == {"test-2"}
    metrics = env.metrics(0)
    assert 'clearance_ruleset_loads_total{result="rejected"} 1.0' in metrics
    assert 'clearance_ruleset_info{version="test-2"} 1.0' in metrics


def test_explain_and_officer_review_from_the_command_line(env):
    import random

    o = make_order(770001, random.Random(9), prefix="REVIEW")
    for t in ("311", "621"):
        o.docs[t][0]["ebcCode"] = "4601DISHON"
    publish(env, [o])
    (d,) = decided(env, [o]).values()
    assert (d["status"], d["lane"]) in ((500, "red"), (300, "yellow"))  # rule set test-2 may be in force

    explain = env.cli("explain", o.order_no)
    assert explain.returncode == 0, explain.stderr
    # The orderNo is the platform's: another platform has no such order.
    other = env.cli("explain", o.order_no, "--ebp", "4601XXXXZZ")
    assert other.returncode != 0 and "no decision yet and no documents" in other.stderr
    # State written by this version needs no migration.
    migrate = env.cli("migrate-keys", "--dry-run")
    assert migrate.returncode == 0 and migrate.stdout.strip() == "nothing to migrate", migrate.stderr
    assert "risk.dishonest_enterprise: DISHONEST_ENTERPRISE" in explain.stdout
    assert "any_dishonest = True" in explain.stdout

    review = env.cli("review", o.order_no, "--release", "--officer", "officer-9")
    assert review.returncode == 0, review.stderr
    reader = Reader(env, registry.DECISIONS)
    records = reader.read_until(lambda r: sum(o.order_no.encode() in v for _, v in r) >= 2, 60)
    finals = [orjson.loads(v) for _, v in records if o.order_no.encode() in v]
    assert [x["status"] for x in finals][-1] == 800 and finals[-1]["review"]["officer"] == "officer-9"
    release = Reader(env, registry.RELEASE).read_until(lambda r: any(k == o.logistics_no for k, _ in r), 30)
    assert any(k == o.logistics_no for k, _ in release)
    explained = env.cli("explain", o.order_no)
    assert "officer result: release by officer-9" in explained.stdout
