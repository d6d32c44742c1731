"""`clearance migrate-keys`: state written under the orderNo-only key (up to the
seventh session) carries on under the (ebpCode, orderNo) key, on a real Redis
and a real Redis Cluster: pending orders complete once, decided ones stay
decided, and what refers to an order key follows it."""
from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from streams import migrate, state
from streams.simulator import GeneratedOrder
from tests.helpers import doc_records, order, run_pipeline
from tests.integration.test_matching import receipts_of


@pytest.fixture(params=["redis", "cluster"])
def where(request):
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster").url, True
    return request.getfixturevalue("redis_url"), False


def old_key(o: GeneratedOrder) -> str:
    """The order's key up to the seventh session."""
    return "clr:o:{o%02d}:%s" % (state.bucket_of(o.order_no), o.order_no)


def to_old_layout(r, o: GeneratedOrder) -> None:
    """Rewrite one order's state as the seventh session's workers kept it: one
    hash per orderNo holding all four documents, with no waybill key, and
    order keys that are that hash's name."""
    new, old = state.order_key(o.ebp_code, o.order_no), old_key(o)
    w = state.waybill_key(o.order_no, "4601XXXXLL", o.logistics_no)
    pending = state.pending_key(o.order_no)
    waiting = {f.decode(): v for f, v in r.hgetall(w).items() if f != b"owner"}
    if waiting:  # a waybill that came before its list lived in the order's hash
        r.hset(new, mapping={k: v for k, v in waiting.items() if k != "first"})
        r.zrem(pending, w)
    r.delete(w)
    r.hdel(new, "w")
    if r.hget(new, "dec"):
        d = orjson.loads(r.hget(new, "dec"))
        r.hset(new, "dec", orjson.dumps(dict(d, orderKey=old)))
    r.rename(new, old)
    score = r.zscore(pending, new)
    if score is not None:
        r.zrem(pending, new)
        r.zadd(pending, {old: score})
    r.delete(state.order_index_key(o.order_no))  # that version kept no orderNo index
    for raw in r.scan_iter(match="clr:idx:*"):
        if r.type(raw) == b"string" and r.get(raw) == new.encode():
            r.set(raw, o.order_no, keepttl=True)
    for raw in r.scan_iter(match="clr:q:*"):
        cents = r.hget(raw, "o:" + new)
        if cents is not None:
            r.hdel(raw, "o:" + new)
            r.hset(raw, "o:" + old, cents)


def test_migrated_state_carries_on_under_the_new_keys(where):
    url, cluster = where
    r = state.sync_client(url, cluster)
    decided, waybill_first, list_first = order(61), order(62), order(63)
    first = run_pipeline(url, [doc_records(decided), doc_records(waybill_first, ["311", "411", "511"]),
                               doc_records(list_first, ["311", "621"])], redis_cluster=cluster)
    (d,) = first.decisions()
    assert d["status"] == 800
    ledger = next(iter(r.scan_iter(match="clr:q:*")))
    total = int(r.hget(ledger, "total"))
    for o in (decided, waybill_first, list_first):
        to_old_layout(r, o)
    assert not any(state.SEP.encode() in k for k in r.scan_iter(match="clr:o:*"))
    _, held = state.guarantee_keys("G1")
    r.zadd(held, {old_key(decided): 5})  # a list held for a guarantee top-up, by its order key

    would = migrate.migrate_order_keys(r, dry_run=True)
    assert would == {"orders": 3, "index_entries": 2, "ledger_fields": 1, "held_lists": 1}
    assert r.exists(old_key(decided))  # a dry run changes nothing
    done = migrate.migrate_order_keys(r)
    assert done == {"orders": 3, "waybills_split": 1, "index_entries": 2, "ledger_fields": 1, "held_lists": 1}
    assert r.zrange(held, 0, -1, withscores=True) == [
        (state.order_key(decided.ebp_code, decided.order_no).encode(), 5.0)]
    assert migrate.migrate_order_keys(r) == {}  # once is enough
    assert not any(r.exists(old_key(o)) for o in (decided, waybill_first, list_first))
    assert r.hget(ledger, "o:" + state.order_key(decided.ebp_code, decided.order_no)) is not None
    assert int(r.hget(ledger, "total")) == total

    # The missing documents complete the pending orders, once each; the decided
    # order's documents, replayed, are answered with its decision.
    after = run_pipeline(url, [doc_records(waybill_first, ["621"]), doc_records(list_first, ["411", "511"])],
                         redis_cluster=cluster)
    assert sorted((x["orderNo"], x["status"]) for x in after.decisions()) == [
        (waybill_first.order_no, 800), (list_first.order_no, 800)]
    replay = run_pipeline(url, [doc_records(decided)], redis_cluster=cluster)
    assert replay.decisions() == [] and {x["returnStatus"] for x in receipts_of(replay)} == {"120", "800"}
    assert r.zcard(state.pending_key(waybill_first.order_no)) + r.zcard(state.pending_key(list_first.order_no)) \
        == 0


def test_retention_migration_keeps_decided_orders_through_the_return_window(where):
    # A version before the 35-day retention kept decided orders 7 days from
    # their decision and settled parcels forever.
    url, cluster = where
    r = state.sync_client(url, cluster)
    day = 86_400
    o = order(64)
    (d,) = run_pipeline(url, [doc_records(o)], redis_cluster=cluster).decisions()
    key = d["orderKey"]
    now_ms = int(r.hget(key, "dect"))
    r.hset(key, "dect", now_ms - 10 * day * 1000)  # decided 10 days ago ...
    r.expire(key, 7 * day - 10 * day + 5 * day)  # ... with the old 7 days (and some slack) to live
    w = r.hget(key, "w").decode()
    parcels = {name: state.parcel_key(f"RET-{name}") for name in ("old", "recent", "waiting", "kept")}
    r.hset(parcels["old"], mapping={"state": "exited", "exitedAt": now_ms - 40 * day * 1000})
    r.hset(parcels["recent"], mapping={"state": "returned", "exitedAt": now_ms - 3 * day * 1000,
                                       "returnedAt": now_ms - day * 1000})
    r.hset(parcels["waiting"], mapping={"state": "releasable", "releasedAt": now_ms - 50 * day * 1000})
    r.hset(parcels["kept"], mapping={"state": "cancelled", "cancelledAt": now_ms})
    r.expire(parcels["kept"], 99)
    ttl = 35 * day

    would = migrate.migrate_retention(r, ttl, now_ms, dry_run=True)
    assert would == {"orders_kept_longer": 1, "parcels_expired": 1, "parcels_given_expiry": 1}
    assert r.ttl(key) <= 2 * day and r.exists(parcels["old"])
    assert migrate.migrate_retention(r, ttl, now_ms) == would
    assert 24 * day < r.ttl(key) <= 25 * day and 24 * day < r.ttl(w) <= 25 * day
    assert not r.exists(parcels["old"])
    assert 33 * day < r.ttl(parcels["recent"]) <= 34 * day
    assert r.ttl(parcels["waiting"]) == -1 and r.ttl(parcels["kept"]) <= 99
    assert migrate.migrate_retention(r, ttl, now_ms) == {}  # idempotent
    # The command an operator runs: the same function, on the Redis the environment names.
    r.hset(parcels["old"], mapping={"state": "exited", "exitedAt": now_ms - 40 * day * 1000})
    env = dict(os.environ, KAFKA_BOOTSTRAP="unused:9092", REDIS_URL=url, REDIS_CLUSTER="1" if cluster else "0")
    run = subprocess.run([sys.executable, "-m", "streams.cli", "migrate-retention", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "would change: 1 parcels expired", run.stderr


def test_claims_migration_gives_decided_orders_their_numbers(where):
    # Orders decided before one order per waybill number and payment serial
    # (R9) claimed neither: the migration claims them for what is left of the
    # six months, and names the claims in the stored decision for a later cancel.
    from tests.integration.test_matching import _reusing

    url, cluster = where
    r = state.sync_client(url, cluster)
    day = 86_400
    a, old, rejected = order(70), order(71), order(72, "amount_mismatch")
    sink = run_pipeline(url, [doc_records(a) + doc_records(old) + doc_records(rejected)], redis_cluster=cluster)
    decisions = {d["orderNo"]: d for d in sink.decisions()}
    for d in decisions.values():  # as the workers of a version before the claims left them
        for k in d.get("claims", ()):
            r.delete(k)
        stored = orjson.loads(r.hget(d["orderKey"], "dec"))
        stored.pop("claims", None)
        r.hset(d["orderKey"], "dec", orjson.dumps(stored))
    a_key = decisions[a.order_no]["orderKey"]
    # The payment document is not kept after the decision: only the waybill number can be claimed.
    claims = [k for k in decisions[a.order_no]["claims"] if ":waybill:" in k]
    assert len(claims) == 1 and r.hget(a_key, "d411") is None
    now_ms = int(r.hget(a_key, "dect"))
    r.hset(decisions[old.order_no]["orderKey"], "dect", now_ms - 200 * day * 1000)  # past the six months
    ttl = 183 * day

    would = migrate.migrate_claims(r, ttl, now_ms, dry_run=True)
    assert would == {"orders": 1, "claims": 1, "orders_past_the_retention": 1}
    assert not any(r.exists(k) for k in claims)
    assert migrate.migrate_claims(r, ttl, now_ms) == would
    assert r.get(claims[0]) == a_key.encode() and 182 * day < r.ttl(claims[0]) <= 183 * day
    assert orjson.loads(r.hget(a_key, "dec"))["claims"] == claims
    assert migrate.migrate_claims(r, ttl, now_ms) == {"orders_past_the_retention": 1}  # idempotent
    # A later order on a's waybill number is refused now.
    later = run_pipeline(url, [doc_records(_reusing(a, 73, waybill=True))], redis_cluster=cluster)
    assert [(d["status"], d["reasons"][-1]["reason"]) for d in later.decisions()] == \
        [(100, "DUPLICATE_WAYBILL_NUMBER")]
    # The command an operator runs: the same function, on the Redis the environment names.
    env = dict(os.environ, KAFKA_BOOTSTRAP="unused:9092", REDIS_URL=url, REDIS_CLUSTER="1" if cluster else "0")
    run = subprocess.run([sys.executable, "-m", "streams.cli", "migrate-claims", "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "would claim: 1 orders past the retention", run.stderr
