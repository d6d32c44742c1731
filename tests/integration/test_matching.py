"""The matcher and decision path on a real Redis (outputs captured instead of produced)."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import time

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from lxml import etree

from streams import pipeline, state
from streams.pipeline import Pipeline
from tests.helpers import CaptureSink, doc_records, order, other_platform, record, run_pipeline, settings_for
from topics import ceb, registry


def receipts_of(sink: CaptureSink) -> list[dict]:
    out = []
    for _, v in sink.on(registry.RECEIPTS):
        if v.startswith(b"<"):
            root = etree.fromstring(v, etree.XMLParser(resolve_entities=False, no_network=True))
            for el in root:
                out.append({c.tag.split("}")[1]: c.text for c in el} | {"entity": el.tag.split("}")[1]})
            continue
        for item in orjson.loads(v):
            ((entity, body),) = item.items()
            out.append(dict(body, entity=entity))
    return out


@pytest.mark.parametrize("perm", list(itertools.permutations(["311", "411", "511", "621"])))
def test_every_arrival_order_gives_one_release(redis_url, perm):
    o = order(1)
    recs = doc_records(o, list(perm))
    sink = run_pipeline(redis_url, [[r] for r in recs])
    decisions = sink.decisions()
    assert len(decisions) == 1
    d = decisions[0]
    assert (d["status"], d["outcome"], d["orderNo"]) == (800, "release", o.order_no)
    assert d["decisionId"] == f"4601XXXXAA:{o.order_no}"
    releases = sink.on(registry.RELEASE)
    assert [k for k, _ in releases] == [o.logistics_no]
    statuses = sorted((r["entity"], r["returnStatus"]) for r in receipts_of(sink))
    assert statuses == sorted([("OrderReturn", "2"), ("PaymentReturn", "2"), ("LogisticsReturn", "2"),
                               ("InventoryReturn", "2"), ("OrderReturn", "120"), ("PaymentReturn", "120"),
                               ("LogisticsReturn", "120"), ("InventoryReturn", "800")])


def test_all_four_in_one_batch_and_xml(redis_url):
    o = order(2)
    sink = run_pipeline(redis_url, [doc_records(o, fmt="xml")])
    (d,) = sink.decisions()
    assert d["status"] == 800
    xml_receipts = [v for _, v in sink.on(registry.RECEIPTS) if v.startswith(b"<?xml")]
    # Receipts are grouped per sender and type: arrival (2) and outcome (120/800) travel together.
    assert len(xml_receipts) == 4
    statuses = []
    for v in xml_receipts:
        root = etree.fromstring(v, etree.XMLParser(resolve_entities=False, no_network=True))
        assert ceb.import_schema().validate(root), ceb.import_schema().error_log.last_error
        statuses += [e.text for e in root.iter("{%s}returnStatus" % ceb.NS)]
    assert sorted(statuses) == sorted(["2", "2", "2", "2", "120", "120", "120", "800"])


def test_replayed_documents_change_nothing(redis_url):
    o = order(3)
    recs = doc_records(o)
    first = run_pipeline(redis_url, [recs])
    again = run_pipeline(redis_url, [recs, list(reversed(recs))])
    assert len(first.decisions()) == 1
    assert again.decisions() == [] and again.on(registry.RELEASE) == []
    # A resent document is answered with its final status, not a second decision.
    assert {r["returnStatus"] for r in receipts_of(again)} == {"120", "800"}


def test_duplicate_before_decision_is_idempotent(redis_url):
    o = order(4)
    recs = doc_records(o)
    sink = run_pipeline(redis_url, [[recs[0]], [recs[0]], [recs[1]], [recs[1]], recs[2:]])
    assert len(sink.decisions()) == 1


def test_conflicting_duplicate_keeps_the_first(redis_url):
    o = order(5)
    changed = order(5)
    changed.docs["411"][0]["amountPaid"] = "1.00"
    pay_first = doc_records(o, ["411"])
    pay_changed = doc_records(changed, ["411"])
    rest = doc_records(o, ["311", "511", "621"])
    sink = run_pipeline(redis_url, [pay_first, pay_changed, rest])
    (d,) = sink.decisions()
    assert d["status"] == 800  # the first (consistent) payment stayed authoritative
    conflict = [r for r in receipts_of(sink) if r["returnStatus"] == "100"]
    assert len(conflict) == 1 and "-401007" in conflict[0]["returnInfo"]


def _as(o, t: str, app: str, **fields):
    """Records of one document of order `o` sent with another appType (and fields)."""
    head, lines = o.docs[t]
    return doc_records(dataclasses.replace(o, docs={t: (dict(head, appType=app, **fields), lines)}), [t])


def test_a_change_before_the_decision_replaces_the_document(redis_url):
    # A payment declared with a wrong amount and corrected (appType 2) before
    # the list arrives: the order is decided on the corrected payment.
    from prometheus_client import REGISTRY

    def changes() -> float:
        return REGISTRY.get_sample_value("clearance_document_amendments_total",
                                         {"type": "411", "kind": "change"}) or 0.0

    o = order(8)
    wrong = _as(o, "411", "1", amountPaid="1.00")
    corrected = _as(o, "411", "2")
    before = changes()
    sink = run_pipeline(redis_url, [wrong, corrected, doc_records(o, ["311", "511", "621"])])
    (d,) = sink.decisions()
    assert d["status"] == 800
    assert changes() == before + 1
    infos = [r["returnInfo"] for r in receipts_of(sink) if r["entity"] == "PaymentReturn"]
    assert any(i.startswith("新增申报成功") for i in infos) and any(i.startswith("变更申报成功") for i in infos)
    assert not [r for r in receipts_of(sink) if r["returnStatus"] == "100"]


def test_a_change_after_the_decision_is_refused(redis_url):
    o = order(9)
    sink = run_pipeline(redis_url, [doc_records(o), _as(o, "411", "2", amountPaid="1.00"), _as(o, "311", "3")])
    (d,) = sink.decisions()
    assert d["status"] == 800
    refused = [r for r in receipts_of(sink) if r["returnStatus"] == "100"]
    assert sorted(r["entity"] for r in refused) == ["OrderReturn", "PaymentReturn"]
    assert all("623" in r["returnInfo"] for r in refused)


def test_a_change_behind_the_completing_document_in_one_batch_is_refused(redis_url):
    o = order(11)
    sink = run_pipeline(redis_url, [doc_records(o) + _as(o, "411", "2", amountPaid="1.00")])
    (d,) = sink.decisions()
    assert d["status"] == 800  # decided on the payment as it was when the order was complete
    (refused,) = [r for r in receipts_of(sink) if r["returnStatus"] == "100"]
    assert refused["entity"] == "PaymentReturn" and "being decided" in refused["returnInfo"]


def test_deleted_documents_leave_nothing_to_time_out(redis_url):
    o = order(10)
    sink = run_pipeline(redis_url, [doc_records(o, ["311", "411"]), _as(o, "311", "3"), _as(o, "411", "3"),
                                    _as(o, "411", "3")], sweep=True, match_timeout_s=0.0)
    assert sink.decisions() == []  # withdrawn: no timeout decision
    statuses = [(r["entity"], r["returnStatus"], r["returnInfo"][:6]) for r in receipts_of(sink)]
    assert statuses.count(("PaymentReturn", "2", "删除申报成功")) == 1
    assert [s for s in statuses if s[1] == "100"] == [("PaymentReturn", "100", "删除申报失败")]
    assert not redis.Redis.from_url(redis_url).exists(state.order_key(o.ebp_code, o.order_no, 16))


def test_same_document_as_xml_then_json_is_a_duplicate_not_a_conflict(redis_url):
    o = order(6)
    sink = run_pipeline(redis_url, [doc_records(o, ["311"], fmt="xml"), doc_records(o, ["311"], fmt="json")])
    assert not [r for r in receipts_of(sink) if r["returnStatus"] == "100"]


@pytest.mark.parametrize("scenario,reason", [
    ("amount_mismatch", "PAYMENT_AMOUNT_MISMATCH"), ("consignee_mismatch", "CONSIGNEE_MISMATCH"),
    ("buyer_not_payer", "BUYER_NOT_PAYER"), ("line_mismatch", "LINE_VALUE_MISMATCH"),
    ("over_single_limit", "SINGLE_LIMIT_EXCEEDED"),
])
def test_rejections_reach_every_sender(redis_url, scenario, reason):
    o = order(7, scenario)
    sink = run_pipeline(redis_url, [doc_records(o)])
    (d,) = sink.decisions()
    assert d["status"] == 100 and reason in {r["reason"] for r in d["reasons"]}
    assert sink.on(registry.RELEASE) == []
    final = [r for r in receipts_of(sink) if r["returnStatus"] == "100"]
    assert len(final) == 4 and all(reason in r["returnInfo"] for r in final)


def test_incomplete_match_times_out_naming_the_missing_document(redis_url):
    o = order(8, "missing_payment")
    sink = run_pipeline(redis_url, [doc_records(o)], match_timeout_s=0.0)
    assert sink.decisions() == []
    time.sleep(0.01)
    swept = run_pipeline(redis_url, [], sweep=True, match_timeout_s=0.0)
    (d,) = swept.decisions()
    assert d["status"] == 100 and d["missing"] == ["411"] and d["rules"] == ["match.timeout"]
    # A late payment after the timeout is answered, not matched.
    late = run_pipeline(redis_url, [doc_records(order(8), ["411"])])
    assert late.decisions() == []
    assert [r["returnStatus"] for r in receipts_of(late)] == ["100"]
    assert redis.Redis.from_url(redis_url).zcard(state.pending_key(o.order_no)) == 0


def test_nothing_times_out_before_its_time(redis_url):
    o = order(9, "missing_waybill")
    run_pipeline(redis_url, [doc_records(o)], match_timeout_s=3600)
    assert run_pipeline(redis_url, [], sweep=True, match_timeout_s=3600).decisions() == []


def test_timeouts_wait_for_the_group_watermark_under_a_backlog(redis_url):
    """An order whose first document was read long ago must not time out while
    some inbound partition is still behind: its other documents may be unread."""
    o = order(10)
    sink = CaptureSink()

    async def go() -> list[int]:
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url, match_timeout_s=0.05), client, sink)
        await p.process(doc_records(o, ["311", "621"]))
        first = int(time.time() * 1000)
        await asyncio.sleep(0.2)  # past the timeout on the wall clock
        counts = [await p.sweep_timeouts(watermark_ms=first - 1000)]  # this worker lags
        # another live worker lags too: the group's watermark is the minimum
        await client.hset(p.watermark_key, "other-worker:1", f"{first - 5000}:{int(time.time() * 1000)}")
        counts.append(await p.sweep_timeouts())
        assert p.horizon_ms == first - 5000
        # the rest of the order was in the backlog: it completes normally
        await p.process(doc_records(o, ["411", "511"]))
        await client.hdel(p.watermark_key, "other-worker:1")
        counts.append(await p.sweep_timeouts())
        await p.aclose()
        await client.aclose()
        return counts

    assert asyncio.run(go()) == [0, 0, 0]
    (d,) = sink.decisions()
    assert d["status"] == 800 and d["rules"] == []


def test_a_silent_worker_stops_holding_the_timeout_clock(redis_url):
    o = order(11, "missing_payment")
    sink = CaptureSink()

    async def go() -> None:
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url, match_timeout_s=0.05), client, sink)
        await p.process(doc_records(o))
        await asyncio.sleep(0.1)
        # its last report is older than WATERMARK_TTL_MS: it left without saying so (kill -9)
        await client.hset(p.watermark_key, "dead-worker:1", f"0:{int(time.time() * 1000) - 60_000}")
        assert await p.sweep_timeouts() == 1
        assert not await client.hexists(p.watermark_key, "dead-worker:1")
        await p.aclose()
        await client.aclose()

    asyncio.run(go())
    (d,) = sink.decisions()
    assert d["rules"] == ["match.timeout"] and d["missing"] == ["411"]


def test_two_deployments_on_one_redis_database_are_told(redis_url, caplog):
    """A second deployment (topic prefix) in the same Redis namespace (left at
    its default by both) is counted on /metrics and logged, once; a
    deployment gone quiet is forgotten."""
    from streams import metrics as m

    async def go() -> None:
        client = aioredis.from_url(redis_url)
        yangpu = Pipeline(settings_for(redis_url, topic_prefix="yangpu."), client, CaptureSink())
        haikou = Pipeline(settings_for(redis_url, topic_prefix="haikou."), client, CaptureSink())
        await yangpu.sweep_timeouts()
        assert m.REDIS_DEPLOYMENTS._value.get() == 1 and "another deployment" not in caplog.text
        await haikou.sweep_timeouts()
        await yangpu.sweep_timeouts()
        await yangpu.sweep_timeouts()
        assert m.REDIS_DEPLOYMENTS._value.get() == 2
        assert caplog.text.count("another deployment uses this Redis namespace 'clr' (CLEARANCE_TOPIC_PREFIX haikou.)") == 1
        # Haikou's workers stopped a while ago: yangpu is alone again, and haikou's entry goes.
        await client.hset(state.deployments_key(), "haikou.", int(time.time() * 1000) - 120_000)
        await yangpu.sweep_timeouts()
        assert m.REDIS_DEPLOYMENTS._value.get() == 1
        assert await client.hkeys(state.deployments_key()) == [b"yangpu."]
        for p in (yangpu, haikou):
            await p.aclose()
        await client.aclose()

    asyncio.run(go())


def test_annual_quota_is_counted_once_per_order(redis_url):
    buyer = "460100199001010011"
    orders = [order(20 + i, buyer_id=buyer) for i in range(80)]
    batches = [doc_records(o) for o in orders]
    sink = run_pipeline(redis_url, batches + batches)  # every order replayed
    decisions = {d["orderNo"]: d for d in sink.decisions()}
    assert len(decisions) == len(orders) == len(sink.decisions())
    released = [d for d in decisions.values() if d["status"] == 800]
    rejected = [d for d in decisions.values() if "ANNUAL_LIMIT_EXCEEDED" in {r["reason"] for r in d["reasons"]}]
    assert rejected, "80 baskets of this size exceed ¥26,000"
    total = sum(round(float(d["dutiablePrice"]) * 100) for d in released)
    assert total <= 2_600_000
    ledger = redis.Redis.from_url(redis_url)
    key = state.ledger_key(released[0]["buyer"], "2026")
    assert int(ledger.hget(key, "total")) == total
    assert rejected[0]["reasons"][-1]["code"] == "-621018"


def test_state_survives_a_worker_restart(redis_url):
    o = order(10)
    recs = doc_records(o)
    first = run_pipeline(redis_url, [recs[:2]])  # one "process"
    second = run_pipeline(redis_url, [recs[2:]])  # a fresh one
    assert first.decisions() == [] and len(second.decisions()) == 1


def assert_released_once(sink: CaptureSink) -> None:
    decisions = sink.decisions()
    assert len(decisions) == 1 and decisions[0]["status"] == 800
    assert len(sink.on(registry.RELEASE)) == 1


class FailingOnceSink(CaptureSink):
    def __init__(self) -> None:
        super().__init__()
        self.fail = True

    async def flush(self) -> None:
        if self.fail:
            self.fail = False
            self.records.clear()  # nothing reached the broker
            raise ConnectionError("broker gone")


def test_decision_is_reemitted_when_a_batch_fails_after_storing_it(redis_url):
    o = order(11)
    sink = FailingOnceSink()

    async def go() -> None:
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url), client, sink)
        recs = doc_records(o)
        with pytest.raises(ConnectionError):
            await p.process(recs)
        await p.process(recs, retry=True)
        await p.aclose()
        await client.aclose()

    asyncio.run(go())
    assert_released_once(sink)


class HeldSink(CaptureSink):
    """A slow broker: the first flush waits until the test lets it go, then
    fails if told to (nothing of that batch reached the broker)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.held, self.go, self.fail = asyncio.Event(), asyncio.Event(), fail

    async def flush(self) -> None:
        if not self.held.is_set():
            self.held.set()
            await self.go.wait()
            if self.fail:
                self.records.clear()
                raise ConnectionError("broker gone")


@pytest.mark.parametrize("fail", [False, True])
def test_a_decision_being_sent_is_not_sent_again_by_a_later_batch(redis_url, monkeypatch, fail):
    """Batches overlap: while one waits on the broker to take its decision, a
    later batch meets the order again (a duplicate). The decision is stored
    but not confirmed; the later batch leaves it to the first. Only if the
    first fails does a later meeting send it."""
    monkeypatch.setattr(pipeline, "STALE_MS", 0)  # an unconfirmed decision is stale at once
    monkeypatch.setattr(pipeline, "SWEEP_STALE_MS", 0)  # for the timeout sweep too
    o = order(13)
    sink = HeldSink(fail)

    async def go() -> None:
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url, match_timeout_s=0.001), client, sink)
        first = asyncio.create_task(p.process(doc_records(o)))
        await sink.held.wait()
        await asyncio.sleep(0.01)
        await p.process(doc_records(o, ["311"]))
        assert await p.sweep_timeouts() == 0  # nor does the sweep, which runs beside the batches
        assert len(sink.decisions()) == 1  # produced by the first, not yet confirmed
        sink.go.set()
        if fail:
            with pytest.raises(ConnectionError):
                await first
        else:
            await first
        assert not p.emitting
        await asyncio.sleep(0.01)
        await p.process(doc_records(o, ["411"]))
        await p.aclose()
        await client.aclose()

    asyncio.run(go())
    assert_released_once(sink)
    if not fail:  # the duplicate order was answered with the decision's outcome, as after a confirm
        assert sorted(r["returnStatus"] for r in receipts_of(sink) if r["entity"] == "OrderReturn") == \
            ["120", "120", "2"]


def test_bad_records_are_dead_lettered_and_the_batch_goes_on(redis_url):
    o = order(12)
    bad = [record("311", b"{not json", key=b"4601XXXXAA"),
           record("311", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'),
           record("411", doc_records(o, ["311"])[0].value),  # an order on the payment topic
           record("621", b"", key=None)]
    sink = run_pipeline(redis_url, [bad[:2] + doc_records(o) + bad[2:]])
    assert len(sink.decisions()) == 1
    dead = [orjson.loads(v) for _, v in sink.on(registry.DEADLETTER)]
    assert [d["reason"] for d in dead] == ["malformed_json", "dtd_forbidden", "wrong_topic", "malformed_json"]
    assert base64.b64decode(dead[0]["value"]) == b"{not json"
    errors = [r for r in receipts_of(sink) if r["entity"] == "MessageReturn"]
    assert len(errors) == 4 and all(int(r["returnStatus"]) < 0 for r in errors)
    assert "not well-formed" in errors[0]["returnInfo"]
    assert "root" not in repr(dead)  # /etc/passwd was never read


def test_decision_time_is_when_the_rules_answered_not_when_the_batch_began(redis_url):
    from processors import decide

    class SlowRules(decide.SpineRules):
        def evaluate(self, case):
            time.sleep(0.03)  # a rule that takes its time: the decision is made after it
            return super().evaluate(case)

    sink = run_pipeline(redis_url, [doc_records(order(12))], rules=SlowRules())
    (d,) = sink.decisions()
    ts = d["timestamps"]
    assert ts["firstDocument"] <= ts["completingDocument"]
    assert ts["decided"] - ts["completingDocument"] >= 30


def _script_commands(r: redis.Redis) -> int:
    # SCRIPT EXISTS / SCRIPT LOAD ("cmdstat_script" on Redis 6, "cmdstat_script|exists" etc. on 7)
    return sum(v["calls"] for k, v in r.info("commandstats").items() if k.startswith("cmdstat_script"))


def test_batches_do_not_ask_redis_whether_scripts_exist_and_survive_a_script_flush(redis_url):
    from streams.app import process_until_done

    o1, o2, o3 = order(301), order(302), order(303)
    sink = CaptureSink()
    sync = redis.Redis.from_url(redis_url)
    counts = {}

    async def go() -> None:
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url), client, sink, None)
        await process_until_done(p, doc_records(o1))
        counts["before"] = _script_commands(sync)
        await process_until_done(p, doc_records(o2))
        counts["after"] = _script_commands(sync)
        await client.script_flush()  # what a Redis restart does to the script cache
        await process_until_done(p, doc_records(o3))
        await p.aclose()
        await client.aclose()

    asyncio.run(go())
    assert counts["after"] == counts["before"]  # no SCRIPT EXISTS round trip per pipeline
    decisions = {d["orderNo"]: d["status"] for d in sink.decisions()}
    assert decisions == {o1.order_no: 800, o2.order_no: 800, o3.order_no: 800}


def test_two_platforms_may_use_one_order_number(redis_url):
    # orderNo is unique per platform only (DOMAIN.md §2.2): each platform's
    # order is matched with its own payment, list and waybill (joined through
    # the list's logisticsCode/logisticsNo) and decided once, whatever the
    # interleaving, including the waybills arriving before either list.
    a = order(30)
    b = other_platform(a, "4601XXXXZZ", "ZT0000000030")
    ra, rb = doc_records(a), doc_records(b)
    by_type = {t: i for i, t in enumerate(a.docs)}
    batches = [[rb[by_type["511"]], ra[by_type["511"]], ra[by_type["311"]]],
               [rb[by_type["311"]], rb[by_type["411"]], ra[by_type["411"]]],
               [rb[by_type["621"]]], [ra[by_type["621"]]]]
    sink = run_pipeline(redis_url, batches)
    decisions = {d["decisionId"]: d for d in sink.decisions()}
    assert set(decisions) == {f"4601XXXXAA:{a.order_no}", f"4601XXXXZZ:{a.order_no}"}
    assert {d["status"] for d in decisions.values()} == {800}
    assert decisions[f"4601XXXXZZ:{a.order_no}"]["logisticsNo"] == "ZT0000000030"
    assert sorted(k for k, _ in sink.on(registry.RELEASE)) == sorted([a.logistics_no, "ZT0000000030"])
    statuses = [r["returnStatus"] for r in receipts_of(sink)]
    assert "100" not in statuses and statuses.count("120") == 6 and statuses.count("800") == 2
    # Each platform's resent list is answered with its own order's decision.
    again = run_pipeline(redis_url, [[rb[by_type["621"]], ra[by_type["511"]]]])
    assert again.decisions() == [] and {r["returnStatus"] for r in receipts_of(again)} == {"800", "120"}


def test_a_list_naming_a_waybill_another_order_holds_is_refused_at_once(redis_url):
    # Platform B's list names platform A's waybill (same orderNo): A's list
    # named it first and keeps it. B's list gets a 100 receipt now instead of
    # its order waiting for a waybill it cannot get; A's order is untouched.
    from prometheus_client import REGISTRY

    def taken() -> float:
        return REGISTRY.get_sample_value("clearance_errors_total", {"reason": "waybill_taken"}) or 0.0

    a = order(32)
    b = other_platform(a, "4601XXXXZZ", "ZT0000000032")
    b.docs["621"][0].update(logisticsNo=a.logistics_no, logisticsCode=a.docs["621"][0]["logisticsCode"])
    before = taken()
    by_type = {t: i for i, t in enumerate(a.docs)}
    sink = run_pipeline(redis_url, [doc_records(a, ["311", "621"]), [doc_records(b)[by_type["621"]]],
                                    doc_records(a, ["411", "511"])])
    (d,) = sink.decisions()
    assert (d["ebpCode"], d["status"]) == ("4601XXXXAA", 800)
    assert taken() == before + 1
    (refused,) = [r for r in receipts_of(sink) if r["returnStatus"] == "100"]
    assert refused["entity"] == "InventoryReturn" and refused["ebpCode"] == "4601XXXXZZ"
    assert a.logistics_no in refused["returnInfo"] and "another order" in refused["returnInfo"]
    assert "4601XXXXAA" not in refused["returnInfo"]  # the other platform is not named
    r = redis.Redis.from_url(redis_url)
    assert not r.exists(state.order_key("4601XXXXZZ", b.order_no))


def _reusing(a, seq: int, waybill: bool = False, payment: bool = False):
    """Another order of the same platform that names a's waybill number or payment serial."""
    b = order(seq)
    if waybill:
        for t in ("511", "621"):
            b.docs[t][0]["logisticsNo"] = a.logistics_no
    if payment:
        for t in ("311", "411"):
            b.docs[t][0]["payTransactionId"] = a.docs["411"][0]["payTransactionId"]
    return b


@pytest.mark.parametrize("kind,reason,code", [("waybill", "DUPLICATE_WAYBILL_NUMBER", "-504015"),
                                              ("payment", "DUPLICATE_PAYMENT", "-401007")])
def test_a_number_another_order_holds_rejects_the_later_order(redis_url, kind, reason, code):
    # R9: a waybill number is unique per carrier for six months, a payment
    # serial per payment company. The first order holds it; a later order
    # naming it is rejected with the official duplicate code.
    a = order(60)
    b = _reusing(a, 61, waybill=kind == "waybill", payment=kind == "payment")
    sink = run_pipeline(redis_url, [doc_records(a), doc_records(b)])
    decisions = {d["orderNo"]: d for d in sink.decisions()}
    assert decisions[a.order_no]["status"] == 800 and "claims" in decisions[a.order_no]
    db = decisions[b.order_no]
    assert db["status"] == 100 and "claims" not in db
    (hit,) = [x for x in db["reasons"] if x["reason"] == reason]
    assert hit["code"] == code and hit["evidence"]["heldBy"] == f"4601XXXXAA:{a.order_no}"
    assert [k for k, _ in sink.on(registry.RELEASE)] == [a.logistics_no]
    refused = [x for x in receipts_of(sink) if x["returnStatus"] == "100"]
    assert len(refused) == 4 and all(code in x["returnInfo"] for x in refused)
    # The sender learns the number is taken, not by which order (it may be another platform's).
    assert all("another order" in x["returnInfo"] and hit["evidence"]["heldBy"] not in x["returnInfo"]
               for x in refused)
    r = redis.Redis.from_url(redis_url)
    a_key = state.order_key("4601XXXXAA", a.order_no).encode()
    waybill = state.claim_key("waybill", "4601XXXXLL", a.logistics_no)
    payment = state.claim_key("payment", "4403XXXXPP", a.docs["411"][0]["payTransactionId"])
    assert r.get(waybill) == a_key and r.get(payment) == a_key
    assert 182 * 86400 < r.ttl(waybill) <= 183 * 86400
    # The rejected order claimed its other number in the same call and gave it back, and its quota.
    own = (state.claim_key("payment", "4403XXXXPP", b.docs["411"][0]["payTransactionId"]) if kind == "waybill"
           else state.claim_key("waybill", "4601XXXXLL", b.logistics_no))
    assert not r.exists(own)
    assert int(r.hget(state.ledger_key(db["buyer"], "2026"), "total") or 0) == 0


def test_two_orders_of_one_batch_naming_one_waybill_number(redis_url):
    a = order(62)
    b = _reusing(a, 63, waybill=True)
    sink = run_pipeline(redis_url, [doc_records(a) + doc_records(b)])
    decisions = sink.decisions()
    assert sorted(d["status"] for d in decisions) == [100, 800]
    (kept,) = [d for d in decisions if d["status"] == 800]
    (refused,) = [d for d in decisions if d["status"] == 100]
    assert [x["evidence"]["heldBy"] for x in refused["reasons"] if x["reason"] == "DUPLICATE_WAYBILL_NUMBER"] \
        == [kept["decisionId"]]


def test_numbers_of_a_rejected_order_are_free_for_another(redis_url):
    # A rejected order holds no number: a corrected order may carry the same parcel and payment.
    a = order(64, "amount_mismatch")
    b = _reusing(a, 65, waybill=True, payment=True)
    sink = run_pipeline(redis_url, [doc_records(a), doc_records(b)])
    assert {d["orderNo"]: d["status"] for d in sink.decisions()} == {a.order_no: 100, b.order_no: 800}


def test_a_zone_may_hold_waybill_numbers_alone_and_not_payment_serials(redis_url):
    # A payment company that reports one serial for a cart split into orders:
    # CLEARANCE_UNIQUE_KINDS=waybill lets both orders through.
    a = order(67)
    b = _reusing(a, 68, payment=True)
    sink = run_pipeline(redis_url, [doc_records(a), doc_records(b)], unique_kinds=("waybill",))
    assert [d["status"] for d in sink.decisions()] == [800, 800]
    r = redis.Redis.from_url(redis_url)
    assert not r.exists(state.claim_key("payment", "4403XXXXPP", a.docs["411"][0]["payTransactionId"]))
    assert r.exists(state.claim_key("waybill", "4601XXXXLL", b.logistics_no))


def test_a_replayed_order_keeps_its_own_numbers(redis_url):
    a = order(66)
    first = run_pipeline(redis_url, [doc_records(a)])
    # A fresh pipeline decides nothing again; the numbers stay the order's.
    again = run_pipeline(redis_url, [doc_records(a)])
    assert [d["status"] for d in first.decisions()] == [800] and again.decisions() == []
    r = redis.Redis.from_url(redis_url)
    assert r.get(state.claim_key("waybill", "4601XXXXLL", a.logistics_no)) == \
        state.order_key("4601XXXXAA", a.order_no).encode()


def test_a_waybill_no_list_names_times_out_on_its_own(redis_url):
    # The list names another logisticsNo than the waybill carries: the order
    # waits for the waybill its list named, and the waybill for a list that
    # names it; both time out, each naming what it lacks.
    from prometheus_client import REGISTRY

    def counted() -> tuple[float, float]:
        return (REGISTRY.get_sample_value("clearance_waybills_unclaimed_total") or 0.0,
                REGISTRY.get_sample_value("clearance_match_timeouts_total", {"missing": "621"}) or 0.0)

    o = order(31)
    o.docs["621"][0]["logisticsNo"] = "YT-NOT-SENT"
    before = counted()
    sink = run_pipeline(redis_url, [doc_records(o)], match_timeout_s=0.0)
    assert sink.decisions() == []
    time.sleep(0.01)
    swept = run_pipeline(redis_url, [], sweep=True, match_timeout_s=0.0)
    decisions = {d["decisionId"]: d for d in swept.decisions()}
    assert set(decisions) == {f"4601XXXXAA:{o.order_no}", f"waybill:4601XXXXLL:{o.logistics_no}"}
    assert decisions[f"4601XXXXAA:{o.order_no}"]["missing"] == ["511"]
    assert decisions[f"waybill:4601XXXXLL:{o.logistics_no}"]["missing"] == ["311", "411", "621"]
    # Counted as an unclaimed waybill, not as an order's match missing its list.
    assert counted() == (before[0] + 1, before[1])
    # Trace finds the waybill by its number: what came, and its timeout.
    from streams import trace

    t = trace.lineage(redis.Redis.from_url(redis_url), o.logistics_no, 16)
    assert (t["orderNo"], t["ebpCode"]) == (o.order_no, "")
    assert [d["type"] for d in t["documents"]] == ["CEB511"]
    assert t["decision"]["status"] == 100 and [r["reason"] for r in t["decision"]["reasons"]] == ["MATCH_TIMEOUT"]
    assert "a waybill no list named" in trace.text(t)
    assert sorted((r["entity"], r["returnStatus"]) for r in receipts_of(swept)) == sorted(
        [("OrderReturn", "100"), ("PaymentReturn", "100"), ("InventoryReturn", "100"), ("LogisticsReturn", "100")])
