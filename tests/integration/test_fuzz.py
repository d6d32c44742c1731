"""Property: no generated input crashes the ingest or changes an unrelated order's outcome."""
from __future__ import annotations

import asyncio
import base64
import copy
import itertools

import orjson
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from processors import ruleset
from streams.pipeline import Pipeline
from streams.simulator import cancel_document, refund_document, to_dxp, to_json, to_xml
from tests.helpers import CaptureSink, doc_records, order, record, settings_for
from tests.unit.test_mutations import damage
from topics import ceb, registry

HEADS = ["OrderHead", "PaymentHead", "LogisticsHead", "InventoryHead", "InvtCancel", "InvtRefundHead"]
TYPES = ["311", "411", "511", "621", "623", "625"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False),
                  st.text(max_size=80))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                           max_leaves=20)
base = order(1)


@st.composite
def mutated_document(draw):
    """A valid document with one field replaced by anything."""
    t = draw(st.sampled_from(["311", "411", "511", "621"]))
    head, lines = copy.deepcopy(base.docs[t])
    field = draw(st.sampled_from(sorted(head)))
    head[field] = draw(json_values)
    return t, orjson.dumps(
        {HEADS[TYPES.index(t)]: head, **({"OrderList" if t == "311" else "InventoryList": lines} if lines else {})})


hostile = st.one_of(
    st.binary(max_size=400).map(lambda b: ("311", b)),
    st.tuples(st.sampled_from(TYPES), st.text(max_size=200).map(str.encode)),
    st.tuples(st.sampled_from(TYPES), st.dictionaries(st.sampled_from(HEADS + ["x"]), json_values, max_size=3)
              .map(orjson.dumps)),
    mutated_document(),
    st.tuples(st.sampled_from(TYPES), st.text(max_size=60).map(
        lambda s: f'<ceb:CEB311Message xmlns:ceb="http://www.chinaport.gov.cn/ceb">{s}</ceb:CEB311Message>'.encode())),
    # DxpMsg envelopes: anything in Data, anything in TransInfo around a valid message.
    st.binary(max_size=300).map(lambda b: ("311", ceb.dxp_wrap(b, "DXPFUZZ", "DXPCLEARANCE0001", "CEB311Message"))),
    st.tuples(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20)).map(
        lambda t: ("311", ceb.dxp_wrap(to_xml("311", [base.docs["311"]]), t[0], t[1], t[2], cop_msg_id=t[2] or "x"))),
)
seq = itertools.count(100)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(bad=hostile)
def test_no_input_crashes_ingest_or_changes_an_unrelated_order(redis_url, bad):
    doc_type, data = bad
    good = order(next(seq))
    sink = CaptureSink()

    async def go():
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url), client, sink)
        recs = doc_records(good)
        await p.process(recs[:2] + [record(doc_type, data)] + recs[2:])
        await p.aclose()
        await client.aclose()

    asyncio.run(go())
    decisions = [d for d in sink.decisions() if d["orderNo"] == good.order_no]
    assert len(decisions) == 1 and decisions[0]["status"] == 800
    for _, v in sink.on(registry.DEADLETTER):
        assert orjson.loads(v)["reason"] != "internal_error", orjson.loads(v)["info"]


ENGINE = ruleset.load(ruleset.DEFAULT_RULESET)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_a_damaged_document_cancel_or_return_never_becomes_an_internal_error(redis_url, data):
    # A valid message with a few bytes or a piece of syntax changed gets past
    # the parser into the schema, the signature, the rules and the aftercare
    # (a cancel or return of a list just released): it is decided, applied or
    # refused with a receipt, never dead-lettered as our bug.
    o = order(next(seq))
    t = data.draw(st.sampled_from(["311", "411", "511", "621", "623", "625"]))
    encode = to_xml if data.draw(st.booleans()) else to_json
    sink = CaptureSink()

    async def go():
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url), client, sink, ENGINE)
        others = [r for r in doc_records(o) if r.topic != registry.sender_topic(t).name]
        if t in ("623", "625"):
            await p.process(doc_records(o))
            invt_no = orjson.loads(sink.on(registry.DECISIONS)[0][1])["invtNo"]
            seed = encode(t, [cancel_document(o, invt_no) if t == "623" else refund_document(o, invt_no)])
            others = []
        else:
            seed = encode(t, [o.docs[t]])
        await p.process(others + [record(t, damage(data.draw, seed))])
        await p.aclose()
        await client.aclose()

    asyncio.run(go())
    for _, v in sink.on(registry.DEADLETTER):
        assert orjson.loads(v)["reason"] != "internal_error", orjson.loads(v)["info"]


SPECS = ceb.field_specs()
ENTITIES = {"311": ("OrderHead", "OrderList"), "411": ("PaymentHead", None), "511": ("LogisticsHead", None),
            "621": ("InventoryHead", "InventoryList")}
# Keys and codes decide which documents match; the other fields are free.
LINKS = {"orderNo", "ebpCode", "ebcCode", "logisticsNo", "logisticsCode", "payCode", "payTransactionId", "guid",
         "copNo", "agentCode", "appType", "appStatus", "gnum"}


@st.composite
def extreme_value(draw, spec):
    """A value the schema allows, at an edge of what it allows."""
    if spec.kind == "int":
        return str(draw(st.sampled_from([0, 1, 7, 99, 2**31 - 1])))
    if spec.kind == "dec":
        whole, frac = spec.total_digits - spec.fraction_digits, spec.fraction_digits
        return draw(st.sampled_from(["0", "1", "5000", "5000.01", "26000", "9" * whole + ("." + "9" * frac if frac else ""),
                                     "0." + "0" * (frac - 1) + "1" if frac else "1"]))
    n = draw(st.sampled_from(sorted({spec.min_len, max(spec.min_len, 1), spec.max_len})))
    return (draw(st.sampled_from(["A", "9", "中", "é", "-", "&", "<", "'", '"'])) * n)[:n]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_schema_valid_extremes_are_decided_without_a_rule_failing(redis_url, data):
    # The largest amounts, the longest names, zero quantities, characters to
    # escape, in JSON or XML: no rule fails to evaluate (that would send the
    # order to review) and nothing is an internal error.
    o = order(next(seq))
    docs = copy.deepcopy(o.docs)
    for _ in range(data.draw(st.integers(1, 4))):
        t = data.draw(st.sampled_from(list(ENTITIES)))
        head, lines = docs[t]
        in_line = bool(lines) and data.draw(st.booleans())
        spec = data.draw(st.sampled_from([s for s in SPECS[ENTITIES[t][1 if in_line else 0]]
                                          if s.name not in LINKS]))
        (lines[0] if in_line else head)[spec.name] = data.draw(extreme_value(spec))
    encode = data.draw(st.sampled_from([to_json, to_xml]))
    sink = CaptureSink()

    async def go():
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url), client, sink, ENGINE)
        await p.process([record(t, encode(t, [docs[t]])) for t in ENTITIES])
        await p.sweep_timeouts()
        await p.aclose()
        await client.aclose()

    asyncio.run(go())
    for _, v in sink.on(registry.DEADLETTER):
        assert orjson.loads(v)["reason"] != "internal_error", orjson.loads(v)["info"]
    for d in sink.decisions():
        assert "RULE_EVALUATION_FAILED" not in {r["reason"] for r in d["reasons"]}, d["reasons"]


_RECEIPT_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_every_receipt_is_well_formed_and_valid_whatever_it_answers(redis_url, data):
    # A receipt echoes what it answers: the reason a record was refused, the
    # record's key as its sender when nothing else names one. A NUL there once
    # made the XML receipt to a DxpMsg sender unreadable (found by this test).
    o = order(next(seq))
    t = data.draw(st.sampled_from(["311", "411", "511", "621"]))
    damaged = damage(data.draw, data.draw(st.sampled_from([to_xml, to_dxp, to_json]))(t, [o.docs[t]]), (0, 2))
    key = data.draw(st.one_of(st.just(b"k"), st.binary(max_size=20)))
    sink = CaptureSink()

    async def go():
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url), client, sink)
        others = [r for r in doc_records(o) if r.topic != registry.sender_topic(t).name]
        await p.process(others + [record(t, damaged, key=key)])
        await p.aclose()
        await client.aclose()

    asyncio.run(go())
    for _, value in sink.on(registry.RECEIPTS):
        if not value.startswith(b"<"):
            orjson.loads(value)
            continue
        root = etree.fromstring(value, _RECEIPT_PARSER)
        if root.tag == ceb.DXP_ROOT:
            assert ceb.dxp_schema().validate(root), ceb.dxp_schema().error_log.last_error
            root = etree.fromstring(base64.b64decode(root.findtext(f"{{{ceb.DXP_NS}}}Data")), _RECEIPT_PARSER)
        assert ceb.import_schema().validate(root), ceb.import_schema().error_log.last_error
