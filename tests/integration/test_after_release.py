"""Release to the gate, cancel and return, tax records and the guarantee, trace —
on the real broker (gate exit events) and a real Redis, one server or a
three-node cluster (REDIS_CLUSTER=1)."""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
import re
from decimal import Decimal

import orjson
import pytest

from config.settings import Settings
from processors import ruleset
from processors.aftercare import RETURN_WINDOW_MS
from streams import metrics, state, trace
from streams.embedded import free_port
from streams.gate import Gate
from streams.pipeline import Pipeline
from streams.simulator import cancel_document, refund_document, to_json, to_xml
from tests.helpers import CaptureSink, doc_records, order, other_platform, record
from tests.integration.worker import Reader
from topics import registry

pytestmark = pytest.mark.integration

DOC = ruleset.load_file(ruleset.DEFAULT_RULESET)


def rules() -> ruleset.RuleEngine:
    doc = copy.deepcopy(DOC)
    doc["parameters"].update(random_inspection_rate=0, random_inspection_rate_aeo=0, post_audit_rate=0)
    return ruleset.compile_ruleset(doc)


class World:
    """A pipeline (outputs captured) and a gate (real broker for exit events), one Redis."""

    def __init__(self, services, prefix: str, redis_url: str, cluster: bool = False):
        self.settings = dataclasses.replace(Settings(kafka_bootstrap=services.kafka_bootstrap,
                                                     redis_url=redis_url, redis_cluster=cluster), topic_prefix=prefix)
        registry.ensure_topics(self.settings)
        self.sink = CaptureSink()
        self.gate = Gate(self.settings)
        self.r = state.sync_client(redis_url, cluster)
        self.engine = rules()

    def run(self, *batches, topup: list | None = None):
        async def go():
            client = state.async_client(self.settings.redis_url, self.settings.redis_cluster)
            p = Pipeline(self.settings, client, self.sink, self.engine)
            for b in batches:
                await p.process(b)
            if topup:
                await p.after.topup(topup)
            await p.aclose()
            await client.aclose()
        asyncio.run(go())

    def decisions(self):
        return [orjson.loads(v) for t, _k, v in self.sink.records if t.endswith("clearance.decisions")]

    def on(self, name):
        return [orjson.loads(v) if not v.startswith(b"<") else v for t, _k, v in self.sink.records
                if t.endswith(name)]

    def to_gate(self):
        self.gate.record(self.on("clearance.release"))

    def released_at_gate(self, o):
        """Clear one order and hand its release event to the gate; its decision."""
        self.run(doc_records(o))
        (d,) = self.decisions()
        self.to_gate()
        return d

    def receipts(self, entity):
        out = []
        for t, _k, v in self.sink.records:
            if t.endswith("ceb.receipts") and not v.startswith(b"<"):
                out += [i[entity] for i in orjson.loads(v) if entity in i]
        return out

    def xml_receipts(self, entity):
        """The returns of XML receipts (to senders of XML) as field -> text."""
        from lxml import etree

        out = []
        for t, _k, v in self.sink.records:
            if t.endswith("ceb.receipts") and v.startswith(b"<"):
                for el in etree.fromstring(v).iter("{http://www.chinaport.gov.cn/ceb}" + entity):
                    out.append({etree.QName(c).localname: c.text for c in el})
        return out


@pytest.fixture(params=["redis", "cluster"])
def world(services, request):
    prefix = f"ar{abs(hash(request.node.name)) % 10**6}."
    if request.param == "cluster":
        return World(services, prefix, request.getfixturevalue("redis_cluster").url, cluster=True)
    return World(services, prefix, request.getfixturevalue("redis_url"))


def after_record(doc_type, doc):
    return record(doc_type, to_json(doc_type, [doc]))


def test_released_parcel_exits_once_under_duplicated_events(world):
    o = order(1)
    world.run(doc_records(o))
    (d,) = world.decisions()
    assert d["status"] == 800
    world.to_gate()
    world.to_gate()  # the same release events again
    assert world.gate.scan(o.logistics_no)["answer"] == "release"
    assert world.gate.batch("4601XXXXWW") == [o.logistics_no]
    first = world.gate.exit(o.logistics_no, "G1")
    again = world.gate.exit(o.logistics_no, "G2")
    assert first["result"] == "exited" and again == {"logisticsNo": o.logistics_no, "result": "already_exited",
                                                      "gate": "G1", "exitedAt": first["exitedAt"]}
    assert world.gate.scan(o.logistics_no)["answer"] == "hold" and world.gate.batch("4601XXXXWW") == []
    exits = exits_on_broker(world).drain(1.0)
    assert [k for k, _ in exits] == [o.logistics_no]
    assert world.gate.exit("NO-SUCH-PARCEL", "G1") == {"logisticsNo": "NO-SUCH-PARCEL", "result": "refused",
                                                       "state": "unknown"}


def exits_on_broker(world):
    return Reader(type("E", (), {"settings": world.settings, "topic": lambda s, spec: registry.topic_name(
        spec, world.settings)})(), registry.EXITS)


def test_an_exit_the_broker_did_not_take_is_owed_until_a_sweep_sends_it(world):
    o = order(2)
    world.released_at_gate(o)
    # A gate process whose broker is unreachable: the parcel leaves (the exit is
    # recorded, the gate is answered), its event cannot be delivered.
    cut_off = Gate(dataclasses.replace(world.settings, kafka_bootstrap=f"127.0.0.1:{free_port()}"))
    cut_off.flush_s = 0.5
    try:
        out = cut_off.exit(o.logistics_no, "G4")
    finally:
        cut_off.close()
    assert out == {"logisticsNo": o.logistics_no, "result": "exited", "gate": "G4", "exitedAt": out["exitedAt"],
                   "eventPending": True}
    assert world.gate.scan(o.logistics_no)["state"] == "exited" and world.gate.batch("4601XXXXWW") == []
    assert world.gate.exit(o.logistics_no, "G5")["result"] == "already_exited"
    reader = exits_on_broker(world)
    assert reader.drain(1.0) == [] and world.gate.pending_exits() == 1
    t = trace.lineage(world.r, o.order_no, state.BUCKETS)  # an operator sees the event is owed
    assert t["parcel"]["exitEventOwed"] is True and "owed in the gates' outbox" in trace.text(t)
    assert world.gate.publish_pending(older_than_ms=60_000) == 0  # not due: its own request may still flush it
    assert world.gate.publish_pending(older_than_ms=0) == 1
    assert world.gate.pending_exits() == 0 and world.gate.publish_pending(older_than_ms=0) == 0
    t = trace.lineage(world.r, o.order_no, state.BUCKETS)
    assert t["parcel"]["exitEventOwed"] is False and "outbox" not in trace.text(t)
    (key, value), = reader.drain(1.0)
    assert key == o.logistics_no and orjson.loads(value) == {
        "logisticsNo": o.logistics_no, "gate": "G4", "exitedAt": out["exitedAt"], "orderNo": o.order_no,
        "invtNo": orjson.loads(value)["invtNo"], "areaCode": "4601XXXXWW"}
    reader.close()


def test_an_exit_answered_before_its_acknowledgement_is_settled_by_the_late_one(world):
    o = order(4)
    world.released_at_gate(o)
    world.gate.flush_s = 0  # answered at once: the acknowledgement comes after the answer
    assert world.gate.exit(o.logistics_no, "G1")["result"] == "exited"
    world.gate.producer.flush(10)  # the service's poll hears it
    world.gate.settle()
    reader = exits_on_broker(world)
    assert world.gate.pending_exits() == 0 and world.gate.publish_pending(older_than_ms=0) == 0
    assert [k for k, _ in reader.drain(1.0)] == [o.logistics_no]  # once, not sent again
    reader.close()


def test_an_owed_exit_whose_parcel_is_gone_is_dropped_not_sent(world):
    # Its record outlived by the outbox (the retention ran out while no gate
    # service swept): nothing can be built, and nothing is sent.
    world.r.zadd(world.gate.outbox("YT-GONE-1"), {"YT-GONE-1": 1})
    reader = exits_on_broker(world)
    assert world.gate.pending_exits() == 1 and world.gate.publish_pending(older_than_ms=0) == 0
    assert world.gate.pending_exits() == 0 and reader.drain(1.0) == []
    reader.close()


def test_an_exit_event_delivered_at_once_leaves_nothing_owed(world):
    o = order(3)
    world.released_at_gate(o)
    assert "eventPending" not in world.gate.exit(o.logistics_no, "G1")
    assert world.gate.pending_exits() == 0 and world.gate.publish_pending(older_than_ms=0) == 0


def test_batch_exit_lets_out_a_whole_area_in_one_call(world):
    orders = [order(10 + i) for i in range(3)]
    world.run(*[doc_records(o) for o in orders])
    world.to_gate()
    out = world.gate.batch_exit("4601XXXXWW", "G7")
    assert sorted(out["exited"]) == sorted(o.logistics_no for o in orders) and out["skipped"] == []
    assert world.gate.batch("4601XXXXWW") == []
    reader = exits_on_broker(world)
    assert sorted(k for k, _ in reader.drain(1.0)) == sorted(out["exited"]) and world.gate.pending_exits() == 0
    reader.close()


def test_cancel_before_exit_holds_the_parcel_and_restores_quota(world):
    o = order(20)
    d = world.released_at_gate(o)
    assert all(world.r.exists(k) for k in d["claims"])
    ledger = state.ledger_key(d["buyer"], "2026")
    assert int(world.r.hget(ledger, "total")) > 0
    cancel = after_record("623", cancel_document(o, d["invtNo"]))
    world.run([cancel], [cancel])  # and a duplicate
    world.to_gate()  # the revocation reaches the gate
    assert world.gate.scan(o.logistics_no)["answer"] == "hold"
    assert world.gate.scan(o.logistics_no)["state"] == "cancelled"
    assert int(world.r.hget(ledger, "total")) == 0
    assert [r["returnStatus"] for r in world.receipts("InvtCancelReturn")] == ["399", "399"]
    cancelled = [x for x in world.decisions() if x.get("event") == "cancel"]
    assert len(cancelled) == 1 and cancelled[0]["outcome"] == "cancelled"
    reversal = [t for t in world.on("clearance.tax") if t["kind"] == "reversal"]
    assert len(reversal) == 1 and reversal[0]["cents"]["taxTotal"] == -world.on("clearance.tax")[0]["cents"]["taxTotal"]
    assert world.gate.exit(o.logistics_no, "G1")["result"] == "refused"
    # The cancelled list's waybill number and payment serial are free again (R9).
    assert len(d["claims"]) == 2 and not any(world.r.exists(k) for k in d["claims"])


def test_cancel_after_exit_is_refused_with_the_official_reason(world):
    o = order(21)
    d = world.released_at_gate(o)
    world.gate.exit(o.logistics_no, "G1")
    world.run([after_record("623", cancel_document(o, d["invtNo"]))])
    (receipt,) = world.receipts("InvtCancelReturn")
    assert receipt["returnStatus"] == "100" and receipt["returnInfo"].startswith("-623005")
    assert int(world.r.hget(state.ledger_key(d["buyer"], "2026"), "total")) > 0


def test_cancel_of_an_unknown_list(world):
    o = order(22)
    world.run([after_record("623", cancel_document(o, "640120260000000099"))])
    (receipt,) = world.receipts("InvtCancelReturn")
    assert receipt["returnStatus"] == "100" and receipt["returnInfo"].startswith("-623003")


def test_a_cancel_naming_another_list_or_from_another_agent_is_refused(world):
    o, other = order(23), order(24)
    world.run(doc_records(o), doc_records(other))
    d, d_other = sorted(world.decisions(), key=lambda x: x["orderNo"] != o.order_no)
    world.to_gate()
    ledger = state.ledger_key(d["buyer"], "2026")
    total = int(world.r.hget(ledger, "total"))
    wrong_list = after_record("623", cancel_document(o, d_other["invtNo"]))  # R12: the original invtNo
    head, lines = cancel_document(o, d["invtNo"])
    not_theirs = after_record("623", (dict(head, agentCode="4601XXXXZZ"), lines))
    world.run([wrong_list, not_theirs])
    receipts = world.receipts("InvtCancelReturn")
    assert [(r["returnStatus"], r["returnInfo"][:7]) for r in receipts] == [("100", "-623003")] * 2
    assert "is not this order's list" in receipts[0]["returnInfo"]
    assert "declaring agent" in receipts[1]["returnInfo"] and d_other["invtNo"] not in receipts[1]["returnInfo"]
    world.to_gate()
    assert world.gate.scan(o.logistics_no)["answer"] == "release"
    assert int(world.r.hget(ledger, "total")) == total
    assert not [x for x in world.decisions() if x.get("event") == "cancel"]


def test_a_signed_cancel_is_held_to_the_register_of_certificates(world):
    o, other = order(25), order(26)
    world.run(doc_records(o), doc_records(other))
    d, d_other = sorted(world.decisions(), key=lambda x: x["orderNo"] != o.order_no)
    world.to_gate()
    signed = record("623", to_xml("623", [cancel_document(o, d["invtNo"])]))  # signed by the demo agent
    doc = copy.deepcopy(DOC)
    agent = next(r for r in doc["reference"]["enterprises"]["rows"] if r["code"] == "4601XXXXCC")
    agent["certs"] = "cd" * 32  # the agent's card is another one: this signature is not the agent's
    shipped, world.engine = world.engine, ruleset.compile_ruleset(doc)
    world.run([signed])
    (refused,) = world.xml_receipts("InvtCancelReturn")
    assert refused["returnStatus"] == "100" and refused["returnInfo"].startswith("R13 ")
    assert "not one registered to copCode 4601XXXXCC" in refused["returnInfo"]
    world.engine = shipped  # the register lists the demo card: the same cancel is accepted
    world.run([record("623", to_xml("623", [cancel_document(other, d_other["invtNo"])]))])
    assert world.xml_receipts("InvtCancelReturn")[-1]["returnStatus"] == "399"
    world.to_gate()
    assert world.gate.scan(o.logistics_no)["answer"] == "release"
    assert world.gate.scan(other.logistics_no)["answer"] == "hold"


def test_return_restores_quota_and_tax_once(world):
    o = order(30)
    d = world.released_at_gate(o)
    ledger = state.ledger_key(d["buyer"], "2026")
    before = int(world.r.hget(ledger, "total"))
    early = after_record("625", refund_document(o, d["invtNo"]))
    world.run([early])  # not exited yet: refused
    world.gate.exit(o.logistics_no, "G1")
    world.run([early], [early])
    statuses = [r["returnStatus"] for r in world.receipts("InvtRefundReturn")]
    assert statuses == ["100", "399", "399"]
    goods = sum(Decimal(line["totalPrice"]) for line in o.docs["621"][1])
    assert before - int(world.r.hget(ledger, "total")) == int(goods * 100)
    reversal = [t for t in world.on("clearance.tax") if t["kind"] == "reversal"]
    charge = [t for t in world.on("clearance.tax") if t["kind"] == "charge"]
    assert len(reversal) == 1 and len(charge) == 1
    # The period report is the sum of the records: charge plus reversal.
    period = state.tax_period_key(charge[0]["period"])
    assert int(world.r.hget(period, "4601XXXXBB:taxTotal")) == \
        charge[0]["cents"]["taxTotal"] + reversal[0]["cents"]["taxTotal"]
    assert world.gate.scan(o.logistics_no)["state"] == "returned"


def test_decided_state_is_kept_through_the_return_window(world):
    # A return may come 30 days after release and needs the order's decision
    # and list: the order, its indexes and its exited parcel are kept for the
    # retention; a releasable parcel is kept until it leaves.
    o = order(31)
    d = world.released_at_gate(o)
    ttl = world.settings.decided_ttl_s
    window_s = RETURN_WINDOW_MS // 1000
    parcel = state.parcel_key(o.logistics_no)
    assert window_s < world.r.ttl(d["orderKey"]) <= ttl
    for key in (state.index_key("ln", o.logistics_no), state.index_key("inv", d["invtNo"]),
                state.order_index_key(o.order_no)):
        assert window_s < world.r.ttl(key) <= ttl
    assert world.r.ttl(parcel) == -1  # releasable: no expiry
    world.gate.exit(o.logistics_no, "G1")
    assert window_s < world.r.ttl(parcel) <= ttl
    world.r.expire(parcel, 60)
    world.run([after_record("625", refund_document(o, d["invtNo"]))])
    assert [r["returnStatus"] for r in world.receipts("InvtRefundReturn")] == ["399"]
    assert window_s < world.r.ttl(parcel) <= ttl  # returned: kept for the retention from now


def test_a_cancelled_parcel_expires_after_the_retention(world):
    o = order(32)
    d = world.released_at_gate(o)
    world.run([after_record("623", cancel_document(o, d["invtNo"]))])
    world.to_gate()
    parcel = state.parcel_key(o.logistics_no)
    assert world.gate.scan(o.logistics_no)["state"] == "cancelled"
    assert 0 < world.r.ttl(parcel) <= world.settings.decided_ttl_s


def test_return_of_more_than_was_declared_is_refused(world):
    o = order(31)
    d = world.released_at_gate(o)
    world.gate.exit(o.logistics_no, "G1")
    too_many = refund_document(o, d["invtNo"], {1: str(int(o.docs["621"][1][0]["qty"]) + 1)})
    world.run([after_record("625", too_many)])
    (receipt,) = world.receipts("InvtRefundReturn")
    assert receipt["returnStatus"] == "100" and "R12" in receipt["returnInfo"]


def test_guarantee_shortfall_holds_a_list_and_a_topup_releases_it(world):
    g, held = state.guarantee_keys("4601XXXXBB")
    world.r.hset(g, mapping={"balance": 100, "used": 0})  # ¥1.00 left
    o = order(40)
    counted = metrics.GUARANTEE_HELD.labels("4601XXXXBB")
    before = counted._value.get()
    world.run(doc_records(o))
    (d,) = world.decisions()
    assert d["status"] == 599 and "GUARANTEE_INSUFFICIENT" in {r["reason"] for r in d["reasons"]}
    assert counted._value.get() == before + 1  # ClearanceGuaranteeExhausted, by guarantor
    assert world.on("clearance.release") == [] and world.on("clearance.tax") == []
    assert world.r.zcard(held) == 1
    world.r.hincrby(g, "balance", 1_000_000)
    event = record("311", orjson.dumps({"assureCode": "4601XXXXBB"}))
    world.run(topup=[event])
    world.run(topup=[event])  # a second top-up event changes nothing
    final = [x for x in world.decisions() if x["status"] == 800]
    assert len(final) == 1 and final[0]["timestamps"]["guaranteed"]
    (release,) = world.on("clearance.release")
    # Released when the top-up came, not when the rules first decided.
    assert release["logisticsNo"] == o.logistics_no
    assert release["releasedAt"] == final[0]["timestamps"]["guaranteed"] > final[0]["timestamps"]["decided"]
    (tax,) = world.on("clearance.tax")
    assert int(world.r.hget(g, "used")) == tax["cents"]["taxTotal"] and world.r.zcard(held) == 0
    assert tax["at"] == release["releasedAt"]


def test_trace_shows_what_happened(world):
    o = order(50)
    d = world.released_at_gate(o)
    world.gate.exit(o.logistics_no, "G3")
    for ident in (o.order_no, o.logistics_no, d["invtNo"]):
        t = trace.lineage(world.r, ident, state.BUCKETS)
        assert t is not None and t["orderNo"] == o.order_no
    assert [x["type"] for x in t["documents"]] == ["CEB311", "CEB411", "CEB511", "CEB621"]
    assert t["decision"]["status"] == 800 and t["parcel"]["state"] == "exited" and t["parcel"]["gate"] == "G3"
    # By payment serial, of the payment company that issued it (the order's R9 claim).
    pay = o.docs["411"][0]
    by_serial = trace.lineage(world.r, pay["payTransactionId"], state.BUCKETS, pay=pay["payCode"])
    assert by_serial is not None and by_serial["orderNo"] == o.order_no
    assert trace.lineage(world.r, pay["payTransactionId"], state.BUCKETS, pay="4403XXXXQQ") is None
    assert trace.lineage(world.r, o.order_no, state.BUCKETS, pay=pay["payCode"]) is None
    text = trace.text(t)
    assert "exited at gate G3" in text and "decision 800 release" in text
    buyer = o.docs["311"][0]["buyerIdNumber"]
    dumped = orjson.dumps(t).decode()
    assert buyer not in dumped, dumped[max(0, dumped.find(buyer) - 300):dumped.find(buyer) + 50]
    assert re.search(r"h:[0-9a-f]{6}", dumped) is None  # not even the keyed hashes


def test_trace_tells_two_platforms_with_one_order_number_apart(world):
    a = order(51)
    b = other_platform(a, "4601XXXXZZ", "ZT0000000051")
    world.run(doc_records(a) + doc_records(b))
    assert {d["ebpCode"] for d in world.decisions()} == {"4601XXXXAA", "4601XXXXZZ"}
    # By orderNo alone: both platforms are named, and one is chosen with ebp.
    both = trace.lineage(world.r, a.order_no, state.BUCKETS)
    assert both == {"orderNo": a.order_no, "platforms": ["4601XXXXAA", "4601XXXXZZ"]}
    assert "--ebp" in trace.text(both)
    t = trace.lineage(world.r, a.order_no, state.BUCKETS, "4601XXXXZZ")
    assert t["ebpCode"] == "4601XXXXZZ" and t["decision"]["logisticsNo"] == "ZT0000000051"
    # A logisticsNo leads to its own platform's order.
    assert trace.lineage(world.r, a.logistics_no, state.BUCKETS)["ebpCode"] == "4601XXXXAA"
    assert trace.lineage(world.r, "ZT0000000051", state.BUCKETS)["ebpCode"] == "4601XXXXZZ"


def test_trace_finds_an_order_number_alone_by_its_index_and_the_pending_set(world):
    # No keyspace scan: a decided order is in the orderNo index its decision
    # wrote, an undecided one in its slot bucket's pending set.
    a = order(53)
    b = other_platform(a, "4601XXXXZZ", "ZT0000000053")
    world.run(doc_records(b), doc_records(a, ["311", "411"]))
    (d,) = world.decisions()
    assert d["ebpCode"] == "4601XXXXZZ"
    index = world.r.hgetall(state.order_index_key(a.order_no, state.BUCKETS))
    assert index == {b"4601XXXXZZ": state.order_key("4601XXXXZZ", a.order_no, state.BUCKETS).encode()}
    assert state.order_keys_for(world.r, a.order_no, state.BUCKETS) == sorted(
        state.order_key(ebp, a.order_no, state.BUCKETS) for ebp in ("4601XXXXAA", "4601XXXXZZ"))
    pending = trace.lineage(world.r, a.order_no, state.BUCKETS, "4601XXXXAA")
    assert [x["type"] for x in pending["documents"]] == ["CEB311", "CEB411"] and "decision" not in pending
    # Once A's order is decided too, both come from the index.
    world.run(doc_records(a, ["511", "621"]))
    assert len(world.r.hgetall(state.order_index_key(a.order_no, state.BUCKETS))) == 2
    assert trace.lineage(world.r, a.order_no, state.BUCKETS)["platforms"] == ["4601XXXXAA", "4601XXXXZZ"]
    # An order the index has lost (decided by a version before it) is found only with scan.
    world.r.delete(state.order_index_key(a.order_no, state.BUCKETS))
    assert state.order_keys_for(world.r, a.order_no, state.BUCKETS) == []
    assert len(state.order_keys_for(world.r, a.order_no, state.BUCKETS, scan=True)) == 2


def test_one_batch_charges_a_guarantor_once_per_list_in_turn(world):
    import random

    from streams.simulator import make_order

    def cents(d):
        return int(Decimal(d["tax"]["taxTotal"]) * 100)

    g, held = state.guarantee_keys("4601XXXXBB")
    try:
        # Enough for both lists of one batch: both released, both charged.
        world.r.hset(g, mapping={"balance": 10_000_000, "used": 0})
        a, b = make_order(61, random.Random(61)), make_order(62, random.Random(62))
        world.run(doc_records(a) + doc_records(b))
        first = {d["orderNo"]: d for d in world.decisions()}
        assert [first[o.order_no]["status"] for o in (a, b)] == [800, 800]
        taxes = [cents(first[o.order_no]) for o in (a, b)]
        assert int(world.r.hget(g, "used")) == sum(taxes) and min(taxes) > 0
        # The same two baskets again (same taxes), with one cent too little for both:
        # the first list charged in the batch is released, the other held.
        world.r.delete(g)
        world.r.hset(g, mapping={"balance": sum(taxes) - 1, "used": 0})
        a2, b2 = make_order(63, random.Random(61)), make_order(64, random.Random(62))
        world.run(doc_records(a2) + doc_records(b2))
        second = {d["orderNo"]: d for d in world.decisions() if d["orderNo"] in (a2.order_no, b2.order_no)}
        assert sorted(d["status"] for d in second.values()) == [599, 800]
        released = next(d for d in second.values() if d["status"] == 800)
        assert int(world.r.hget(g, "used")) == cents(released)
        assert world.r.zcard(held) == 1
    finally:  # the guarantor is shared with the tests after this one: no guarantee account again
        world.r.delete(g, held)


def _release(ln: str, invt: str, area: str = "AREA-B") -> dict:
    """A release event of another list that names the same waybill number."""
    return {"logisticsNo": ln, "orderNo": "OTHER-ORDER", "invtNo": invt, "areaCode": area, "billNo": "",
            "status": 800, "releasedAt": 1}


def _revoked(ln: str, invt: str, area: str = "AREA-B") -> dict:
    return {"logisticsNo": ln, "orderNo": "OTHER-ORDER", "invtNo": invt, "status": "revoked", "revokedAt": 2,
            "areaCode": area}


def test_two_lists_with_one_waybill_number_hold_the_parcel_until_one_is_cancelled(world):
    # Two carriers' numbers alike (or lists released before numbers were
    # claimed): the gate cannot tell the parcels apart by the label, so
    # neither leaves until one list is cancelled.
    o = order(50)
    d = world.released_at_gate(o)
    ln = o.logistics_no
    world.gate.record([_release(ln, "INVT-OTHER")])
    world.gate.record([_release(ln, "INVT-OTHER")])  # a replayed event changes nothing more
    info = world.gate.scan(ln)
    assert (info["answer"], info["state"], info["invtNo"], info["c:invtNo"]) == \
        ("hold", "conflict", d["invtNo"], "INVT-OTHER")
    assert world.gate.exit(ln, "G1")["result"] == "refused"
    assert world.gate.batch(d["areaCode"]) == [] and world.gate.batch("AREA-B") == []
    # The other list is cancelled: this order's parcel may leave, and a replay of its release is ignored.
    assert world.gate.record([_revoked(ln, "INVT-OTHER")]) == 1
    world.gate.record([_release(ln, "INVT-OTHER")])
    info = world.gate.scan(ln)
    assert (info["answer"], info["invtNo"]) == ("release", d["invtNo"]) and "c:invtNo" not in info
    assert world.gate.batch(d["areaCode"]) == [ln]
    assert world.gate.exit(ln, "G1")["result"] == "exited"


def test_cancelling_the_first_of_two_lists_lets_the_other_parcel_leave(world):
    o = order(51)
    d = world.released_at_gate(o)
    ln = o.logistics_no
    world.gate.record([_release(ln, "INVT-OTHER")])
    world.run([after_record("623", cancel_document(o, d["invtNo"]))])  # the worker cancels o's list
    assert [r["returnStatus"] for r in world.receipts("InvtCancelReturn")] == ["399"]
    info = world.gate.scan(ln)
    assert (info["answer"], info["invtNo"], info["areaCode"]) == ("release", "INVT-OTHER", "AREA-B")
    assert world.gate.batch("AREA-B") == [ln]
    world.to_gate()  # o's release and its revocation, replayed: nothing changes
    assert world.gate.scan(ln)["invtNo"] == "INVT-OTHER" and world.gate.batch("AREA-B") == [ln]
    assert world.gate.batch(d["areaCode"]) == []


def test_a_list_cancelled_before_its_release_reaches_the_gate_does_not_block_another(world):
    o = order(52)
    d = world.released_at_gate(o)
    ln = o.logistics_no
    # The other list, of the same bonded area, is cancelled before its release reaches the gate.
    world.gate.record([_revoked(ln, "INVT-LATE", d["areaCode"])])
    world.gate.record([_release(ln, "INVT-LATE", d["areaCode"])])  # its release comes after its cancel
    info = world.gate.scan(ln)
    assert (info["answer"], info["invtNo"]) == ("release", d["invtNo"])
    assert world.gate.batch(d["areaCode"]) == [ln]  # still in its area's set
    assert world.gate.exit(ln, "G1")["result"] == "exited"


def test_after_an_unanswered_wait_exits_do_not_wait_for_the_broker_until_it_answers_again(world, tmp_path):
    from streams.embedded import start_kafka

    a, b, c = (order(n) for n in (20, 21, 22))
    world.run(*(doc_records(o) for o in (a, b, c)))
    world.to_gate()
    assert all(world.gate.scan(o.logistics_no)["answer"] == "release" for o in (a, b, c))
    port = free_port()  # no broker there yet
    away = Gate(dataclasses.replace(world.settings, kafka_bootstrap=f"127.0.0.1:{port}"))
    away.flush_s = 0.5
    broker = None
    try:
        assert not away.broker_away
        first = away.exit(a.logistics_no, "G1")  # waits flush_s, hears nothing
        assert first["eventPending"] is True and away.broker_away
        second = away.exit(b.logistics_no, "G1")  # queued, not waited for
        assert second["result"] == "exited" and second["eventPending"] is True and away.broker_away
        assert world.gate.pending_exits() == 2

        # The broker comes up on that address: the queued events go out, and the
        # first acknowledgement heard ends the presumption.
        _bootstrap, broker = start_kafka(str(tmp_path), port)
        registry.ensure_topics(away.settings)
        deadline = time.monotonic() + 60
        while away.broker_away and time.monotonic() < deadline:
            away.producer.poll(0.2)
        assert not away.broker_away
        third = away.exit(c.logistics_no, "G1")  # waits again, and is acknowledged within it
        assert third["result"] == "exited" and "eventPending" not in third
        away.producer.flush(10)
        away.settle()
        assert world.gate.pending_exits() == 0  # all three delivered, none left owed
    finally:
        away.close()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
