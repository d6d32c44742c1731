"""The policy and risk engine inside the pipeline, on a real Redis."""
from __future__ import annotations

import copy
import random
import time

import orjson
import redis

from processors import ruleset
from streams import metrics, state
from streams.pipeline import InRecord
from streams.simulator import resident_id
from tests.helpers import doc_records, order, run_pipeline
from topics import registry

DOC = ruleset.load_file(ruleset.DEFAULT_RULESET)
BUYER = resident_id(random.Random(42))  # one buyer with a valid check digit


def engine(**params) -> ruleset.RuleEngine:
    doc = copy.deepcopy(DOC)
    doc["parameters"].update({"random_inspection_rate": 0, "random_inspection_rate_aeo": 0, "post_audit_rate": 0},
                             **params)
    return ruleset.compile_ruleset(doc)


def decisions(sink):
    return {d["orderNo"]: d for d in sink.decisions()}


def test_decisions_record_rule_set_version_tax_and_lane(redis_url):
    o = order(1)
    (d,) = run_pipeline(redis_url, [doc_records(o)], rules=engine()).decisions()
    assert (d["status"], d["lane"], d["ruleSetVersion"], d["final"]) == (800, "green", "2026.11-2", True)
    assert float(d["tax"]["taxTotal"]) > 0 and d["tax"]["lines"][0]["gcode"]
    assert d["receipt"]["to"] == "4601XXXXCC"


def test_buyer_velocity_is_counted_across_orders(redis_url):
    buyer = BUYER
    orders = [order(100 + i, buyer_id=buyer) for i in range(4)]
    sink = run_pipeline(redis_url, [doc_records(o) for o in orders], rules=engine(velocity_orders_24h=2))
    got = [decisions(sink)[o.order_no] for o in orders]
    assert [d["lane"] for d in got] == ["green", "green", "yellow", "yellow"]
    hit = next(r for r in got[2]["reasons"] if r["reason"] == "BUYER_VELOCITY")
    assert hit["evidence"]["buyer_orders_24h"] == 3


def test_one_address_shared_by_many_buyers(redis_url):
    orders = [order(200 + i) for i in range(4)]
    for o in orders:  # same consignee address on order, waybill and list
        for t in ("311", "511", "621"):
            o.docs[t][0]["consigneeAddress"] = "海南省海口市美兰区同一地址1号"
    sink = run_pipeline(redis_url, [doc_records(o) for o in orders], rules=engine(shared_address_buyers=2))
    lanes = [decisions(sink)[o.order_no]["lane"] for o in orders]
    assert lanes == ["green", "green", "yellow", "yellow"]


def _sugar(o, kg: str):
    for t in ("311", "621"):
        line = o.docs[t][1][0]
        if t == "621":
            line.update(gcode="1701991000", qty1=kg, unit1="035")
    return o


def test_annual_quantity_cap_and_replay_counts_once(redis_url):
    buyer = BUYER
    first, second = _sugar(order(300, buyer_id=buyer), "1.5"), _sugar(order(301, buyer_id=buyer), "1.0")
    rules = engine(tax_tolerance=1000)  # sugar has a 9 % VAT rate; the simulator declared 13 %
    sink = run_pipeline(redis_url, [doc_records(first), doc_records(first), doc_records(second)], rules=rules)
    d = decisions(sink)
    assert d[first.order_no]["status"] == 800
    assert d[second.order_no]["status"] == 100
    assert "ANNUAL_QUANTITY_CAP_EXCEEDED" in {r["reason"] for r in d[second.order_no]["reasons"]}
    r = redis.Redis.from_url(redis_url)
    ledger = state.ledger_key(d[first.order_no]["buyer"], "2026", ledger="qty:17019910")
    assert int(r.hget(ledger, "total")) == 1500
    # The rejected order holds no amount quota either.
    amount = state.ledger_key(d[first.order_no]["buyer"], "2026")
    assert int(r.hget(amount, "total")) == round(float(d[first.order_no]["dutiablePrice"]) * 100)


def test_replayed_traffic_decides_identically_and_counts_quota_once(redis_url):
    buyer = BUYER
    orders = [order(400 + i, buyer_id=buyer) for i in range(60)]
    batches = [doc_records(o) for o in orders]
    rules = engine()
    first = run_pipeline(redis_url, batches, rules=rules)
    r = redis.Redis.from_url(redis_url)
    stored = {o.order_no: r.hget(state.order_key(o.ebp_code, o.order_no), "dec") for o in orders}
    replay = run_pipeline(redis_url, batches, rules=rules)
    assert replay.decisions() == []  # nothing decided twice
    assert {o.order_no: r.hget(state.order_key(o.ebp_code, o.order_no), "dec") for o in orders} == stored
    # Quota is held by every order that may still be released (800, and 300/500 awaiting an officer).
    holding = [d for d in first.decisions() if d["status"] != 100]
    assert {d["status"] for d in holding} == {800, 300}  # the velocity rule sends the later ones to review
    key = state.ledger_key(holding[0]["buyer"], "2026")
    assert int(r.hget(key, "total")) == sum(round(float(d["dutiablePrice"]) * 100) for d in holding)


def _review(order_no: str, result: str, ebp: str = "4601XXXXAA") -> InRecord:
    return InRecord(registry.REVIEWS.name, 0, 1, order_no.encode(),
                    orjson.dumps({"ebpCode": ebp, "orderNo": order_no, "result": result, "officer": "officer-7",
                                  "note": "checked"}), 0)


def _dishonest(o):
    for t in ("311", "621"):
        o.docs[t][0]["ebcCode"] = "4601DISHON"
    return o


def test_inspection_then_officer_release(redis_url):
    o = _dishonest(order(500))
    sink = run_pipeline(redis_url, [doc_records(o)], rules=engine(),
                        reviews=[[_review(o.order_no, "release")], [_review(o.order_no, "release")]])
    first, final = sink.decisions()
    assert (first["status"], first["lane"], first["final"]) == (500, "red", False)
    assert (final["status"], final["final"], final["review"]["officer"]) == (800, True, "officer-7")
    assert final["provisional"] == {"status": 500, "lane": "red"}
    assert [k for k, _ in sink.on(registry.RELEASE)] == [o.logistics_no]  # released once, after review
    receipts = b"".join(v for _, v in sink.on(registry.RECEIPTS))
    assert b'"returnStatus":"500"' in receipts and b'"returnStatus":"800"' in receipts


def test_officer_reject_returns_the_quota_and_the_numbers(redis_url):
    o = _dishonest(order(501))
    sink = run_pipeline(redis_url, [doc_records(o)], rules=engine(), reviews=[[_review(o.order_no, "reject")]])
    first, final = sink.decisions()
    assert final["status"] == 100 and sink.on(registry.RELEASE) == []
    r = redis.Redis.from_url(redis_url)
    assert int(r.hget(state.ledger_key(first["buyer"], "2026"), "total")) == 0
    # The inspected order held its waybill number and payment serial (R9) until the reject.
    assert len(first["claims"]) == 2 and not any(r.exists(k) for k in first["claims"])


def test_officer_release_held_for_the_guarantee_keeps_quota_and_numbers(redis_url):
    # Released by the officer but held (599) for the guarantor's balance: a
    # top-up may still release it, so its reservation and numbers stay.
    r = redis.Redis.from_url(redis_url)
    g, _held = state.guarantee_keys("4601XXXXBB")
    r.hset(g, mapping={"balance": 100, "used": 0})  # ¥1.00 left
    o = _dishonest(order(503))
    sink = run_pipeline(redis_url, [doc_records(o)], rules=engine(), reviews=[[_review(o.order_no, "release")]])
    first, final = sink.decisions()
    assert (first["status"], final["status"]) == (500, 599)
    assert int(r.hget(state.ledger_key(first["buyer"], "2026"), "total")) == \
        round(float(first["dutiablePrice"]) * 100)
    assert len(first["claims"]) == 2 and all(r.exists(k) for k in first["claims"])


def test_review_of_a_released_order_changes_nothing(redis_url):
    o = order(502)
    sink = run_pipeline(redis_url, [doc_records(o)], rules=engine(), reviews=[[_review(o.order_no, "reject")]])
    assert [d["status"] for d in sink.decisions()] == [800]


def test_a_list_signed_by_a_certificate_not_registered_to_its_sender_goes_to_review(redis_url):
    # The simulator's agent signs every 621; the register below lists another
    # certificate for its copCode, as if the card had been replaced.
    doc = copy.deepcopy(DOC)
    doc["parameters"].update({"random_inspection_rate": 0, "random_inspection_rate_aeo": 0, "post_audit_rate": 0})
    agent = next(r for r in doc["reference"]["enterprises"]["rows"] if r["code"] == "4601XXXXCC")
    registered = agent["certs"]
    agent["certs"] = "ab" * 32
    signed, other = order(31), order(32)
    expiry = metrics.SIGNER_EXPIRY.labels("4601XXXXCC")
    expiry.set(1)
    batches = [doc_records(signed, ["311", "411", "511"]) + doc_records(signed, ["621"], fmt="xml"),
               doc_records(other)]  # JSON carries no signature: nothing to hold to the register
    got = decisions(run_pipeline(redis_url, batches, rules=ruleset.compile_ruleset(doc)))
    held = got[signed.order_no]
    assert held["status"] == 300 and "SENDER_IDENTITY_MISMATCH" in {r["reason"] for r in held["reasons"]}
    assert got[other.order_no]["status"] == 800
    assert expiry._value.get() == 1  # an unregistered card's expiry is not exported
    agent["certs"] = registered  # the demo certificate registered: the same list is released
    again = order(33)
    got = decisions(run_pipeline(redis_url, [doc_records(again, ["311", "411", "511"]) +
                                             doc_records(again, ["621"], fmt="xml")],
                                 rules=ruleset.compile_ruleset(doc)))
    assert got[again.order_no]["status"] == 800
    # The registered card's expiry (the demo certificate: 2046-11-23), for the alert weeks before.
    assert time.gmtime(expiry._value.get())[:3] == (2046, 11, 23)


def _exported_expiries() -> dict[str, float]:
    return {s.labels["cop_code"]: s.value for fam in metrics.SIGNER_EXPIRY.collect() for s in fam.samples}


def test_a_card_taken_off_the_register_stops_being_exported(redis_url):
    # A live rule-set push that no longer lists the agent's card withdraws the
    # exported expiry (and so its alert); one that still lists it keeps it.
    import asyncio

    from streams.pipeline import Pipeline
    from tests.helpers import CaptureSink, settings_for

    doc = copy.deepcopy(DOC)
    agent = next(r for r in doc["reference"]["enterprises"]["rows"] if r["code"] == "4601XXXXCC")
    registered = ruleset.compile_ruleset(doc)
    agent["certs"] = "ab" * 32
    replaced = ruleset.compile_ruleset(doc)
    metrics.SIGNER_EXPIRY.clear()

    async def go() -> list[dict[str, float]]:
        settings = settings_for(redis_url)
        client = state.async_client(redis_url)
        p = Pipeline(settings, client, CaptureSink(), registered)
        seen = []
        await p.process(doc_records(order(34), ["621"], fmt="xml"))
        seen.append(_exported_expiries())
        p.use_rules(registered)  # the same register again: nothing changes
        seen.append(_exported_expiries())
        p.use_rules(replaced)
        seen.append(_exported_expiries())
        await p.aclose()
        await client.aclose()
        return seen

    signed, same, after = asyncio.run(go())
    assert time.gmtime(signed["4601XXXXCC"])[:3] == (2046, 11, 23)
    assert same == signed
    assert "4601XXXXCC" not in after
