"""End to end on the real embedded broker and Redis with real worker processes."""
from __future__ import annotations

import base64
import random
import re
import time

import orjson
import pytest
import redis
from lxml import etree

from streams import state
from streams.simulator import Publisher, dxp_sender, generate, make_order, to_dxp, to_xml
from tests.integration.worker import Env, Reader
from topics import ceb, registry

pytestmark = pytest.mark.integration


def decisions_of(records):
    return [orjson.loads(v) for _, v in records]


@pytest.fixture(scope="module")
def env(services):
    e = Env(services, CLEARANCE_MATCH_TIMEOUT_S="4")
    e.start_worker()
    e.wait_assigned()
    yield e
    e.stop()


def test_xml_and_json_traffic_gets_exact_decisions_releases_and_receipts(env):
    # Three platforms, each numbering its own orders: many orderNos are
    # declared by two or three platforms, each order decided on its own.
    orders = list(generate(300, seed=11, prefix="E2E", platforms=3))
    assert len({o.order_no for o in orders}) < 150 and len({o.logistics_no for o in orders}) == 300
    xml_pub = Publisher(env.settings, "xml", batch=50)
    json_pub = Publisher(env.settings, "json", batch=1)
    xml_pub.send(orders[:150])
    json_pub.send(orders[150:])
    xml_pub.flush()
    json_pub.flush()

    reader = Reader(env, registry.DECISIONS)
    records = reader.read_until(lambda r: len(r) >= len(orders), timeout=90)
    decisions = {d["decisionId"]: d for d in decisions_of(records)}
    assert len(records) == len(decisions) == len(orders)
    for o in orders:
        d = decisions[f"{o.ebp_code}:{o.order_no}"]
        assert d["ebpCode"] == o.ebp_code and d.get("logisticsNo", o.logistics_no) == o.logistics_no
        assert d["status"] == o.expected_status, (o.scenario, d["reasons"])
        if o.expected_reason:
            assert o.expected_reason in {r["reason"] for r in d["reasons"]}
    timeouts = [d for d in decisions.values() if d.get("missing")]
    assert timeouts and all(d["missing"] in (["411"], ["511"]) for d in timeouts)

    released = {o.logistics_no for o in orders if o.expected_status == 800}
    rel = Reader(env, registry.RELEASE).read_until(lambda r: len(r) >= len(released), timeout=30)
    assert {k for k, _ in rel} == released
    for _, v in rel:
        event = orjson.loads(v)
        assert event["status"] == 800 and event["logisticsNo"] and len(event["invtNo"]) == 18

    receipts = Reader(env, registry.RECEIPTS).drain()
    xml_622 = [v for _, v in receipts if v.startswith(b"<?xml") and b"CEB622Message" in v]
    assert xml_622
    for v in xml_622:
        root = etree.fromstring(v, etree.XMLParser(resolve_entities=False, no_network=True))
        assert ceb.import_schema().validate(root)
    statuses_622 = [s for v in xml_622 for s in re.findall(rb"<ceb:returnStatus>(\d+)<", v)]
    assert b"800" in statuses_622 and b"2" in statuses_622


def test_dxp_envelopes_are_opened_decided_and_answered_in_envelopes(env):
    # Terminal nodes of the customs data exchange send CEB XML in a DxpMsg; the
    # receipts go back to each sender's node in one, and a refused message's
    # CEB900 names the CopMsgId it came with.
    orders = list(generate(40, seed=21, prefix="DXPE2E"))
    pub = Publisher(env.settings, "dxp", batch=20)
    pub.send(orders)
    bad = ceb.dxp_wrap(to_xml("311", [orders[0].docs["311"]]), "DXPBADNODE000001", env.settings.dxp_id,
                       "CEB411Message", cop_msg_id="E2E-MISMATCH-1")
    pub.send_raw("311", "anything", bad)
    # R13: a list sent from a node that is not the one its BaseTransfer names.
    rogue = make_order(990003, random.Random(7), prefix="DXPROGUE")
    for t in ("311", "411", "511"):
        pub.send_raw(t, rogue.order_no, to_dxp(t, [rogue.docs[t]]))
    # BaseSubscribe: a node that asked for copies of an order's receipts (RET).
    subscribed = make_order(990004, random.Random(8), prefix="DXPSUBSCR")
    for t in ("411", "511", "621"):
        pub.send_raw(t, subscribed.order_no, to_dxp(t, [subscribed.docs[t]]))
    pub.send_raw("311", subscribed.order_no, ceb.dxp_wrap(to_xml("311", [subscribed.docs["311"]]).replace(
        b"</ceb:BaseTransfer>", b"</ceb:BaseTransfer><ceb:BaseSubscribe><ceb:status>RET</ceb:status><ceb:dxpMode>"
        b"DXP</ceb:dxpMode><ceb:dxpAddress>DXPAGENT00000001</ceb:dxpAddress></ceb:BaseSubscribe>", 1),
        dxp_sender("311"), env.settings.dxp_id, "CEB311Message"))
    pub.send_raw("621", "anything", ceb.dxp_wrap(to_xml("621", [rogue.docs["621"]]), "DXPROGUE00000001",
                                                 env.settings.dxp_id, "CEB621Message"))
    pub.flush()

    records = Reader(env, registry.DECISIONS).read_until(
        lambda r: sum(b"DXPE2E" in v for _, v in r) >= len(orders), timeout=90)
    decisions = {d["decisionId"]: d for d in decisions_of(records) if d["orderNo"].startswith("DXPE2E")}
    assert len(decisions) == len(orders)
    for o in orders:
        assert decisions[f"{o.ebp_code}:{o.order_no}"]["status"] == o.expected_status
    flagged = Reader(env, registry.DECISIONS).read_until(lambda r: any(b"DXPROGUE" in v for _, v in r), timeout=60)
    [held] = [d for d in decisions_of(flagged) if d["orderNo"] == rogue.order_no]
    assert held["status"] == 300 and "SENDER_IDENTITY_MISMATCH" in {r["reason"] for r in held["reasons"]}
    Reader(env, registry.DECISIONS).read_until(lambda r: any(subscribed.order_no.encode() in v for _, v in r),
                                               timeout=60)

    nodes = {dxp_sender(t) for t in ("311", "411", "511", "621")} | {"DXPBADNODE000001", "DXPAGENT00000001"}
    got = [(k, v) for k, v in Reader(env, registry.RECEIPTS).drain() if k in nodes]
    assert {k for k, _ in got} == nodes
    inner_by_type: dict[str, list] = {}
    for key, v in got:
        root = etree.fromstring(v, etree.XMLParser(resolve_entities=False, no_network=True))
        assert ceb.dxp_schema().validate(root)
        t = "{%s}TransInfo/{%s}" % (ceb.DXP_NS, ceb.DXP_NS)
        assert root.findtext(t + "SenderId") == env.settings.dxp_id
        assert root.findtext(t + "ReceiverIds/{%s}ReceiverId" % ceb.DXP_NS) == key
        inner = etree.fromstring(base64.b64decode(root.findtext("{%s}Data" % ceb.DXP_NS)),
                                 etree.XMLParser(resolve_entities=False, no_network=True))
        assert ceb.import_schema().validate(inner)
        assert root.findtext(t + "MsgType") == ceb._local(inner.tag)
        inner_by_type.setdefault(ceb._local(inner.tag), []).append((key, inner))
    assert {"CEB312Message", "CEB412Message", "CEB512Message", "CEB622Message", "CEB900Message"} <= set(inner_by_type)
    released = sum(o.expected_status == 800 for o in orders + [subscribed])
    statuses_622 = [e.text for _, i in inner_by_type["CEB622Message"] for e in i.iter("{%s}returnStatus" % ceb.NS)]
    assert statuses_622.count("800") == released
    copies = [i for key, i in inner_by_type["CEB312Message"] if key == "DXPAGENT00000001"]
    statuses = {e.findtext("{%s}returnStatus" % ceb.NS) for i in copies for e in i}
    assert {e.findtext("{%s}orderNo" % ceb.NS) for i in copies for e in i} == {subscribed.order_no}
    assert statuses == {"2", "120"}  # arrival, then matched: what its sender got
    [(key, error)] = inner_by_type["CEB900Message"]
    assert key == "DXPBADNODE000001"
    assert error.findtext(".//{%s}oriCopMsgId" % ceb.NS) == "E2E-MISMATCH-1"
    assert "MsgType" in error.findtext(".//{%s}returnInfo" % ceb.NS)
    dead = [orjson.loads(v) for _, v in Reader(env, registry.DEADLETTER).drain(1.0)]
    assert "envelope_mismatch" in [d["reason"] for d in dead]
    # A support desk finds the refused message by the CopMsgId its sender quotes.
    listed = env.cli("deadletter", "list", "--message", "E2E-MISMATCH-1").stdout
    assert "1 dead letters" in listed and "envelope_mismatch" in listed
    dead_id = listed.split()[0]
    assert "DxpMsg E2E-MISMATCH-1 from node DXPBADNODE000001" in env.cli("deadletter", "show", dead_id).stdout
    # The trace names each document's message as its sender knows it, and who said they sent it.
    traced = orjson.loads(env.cli("trace", subscribed.order_no, "--json").stdout)
    by_type = {d["type"]: d for d in traced["documents"]}
    assert by_type["CEB311"]["format"] == "dxp" and by_type["CEB311"]["copMsgId"]
    assert by_type["CEB311"]["subscribers"] == ["DXPAGENT00000001"]
    assert by_type["CEB621"]["sender"] == by_type["CEB621"]["dxpId"] == dxp_sender("621")
    assert "message " + by_type["CEB311"]["copMsgId"] in env.cli("trace", subscribed.order_no).stdout


def test_an_official_sample_published_in_an_envelope_is_answered_in_one(env, tmp_path):
    from tests.conftest import FIXTURES

    def receipt_to(node: str, *, after: int = 0) -> etree._Element:
        got = Reader(env, registry.RECEIPTS).read_until(
            lambda r: sum(k == node for k, _ in r) > after, timeout=60)
        v = [v for k, v in got if k == node][after]
        root = etree.fromstring(v, etree.XMLParser(resolve_entities=False, no_network=True))
        return etree.fromstring(base64.b64decode(root.findtext("{%s}Data" % ceb.DXP_NS)))

    # The sample's signature is a placeholder copied into every official sample:
    # verified, it is refused, in a CEB900 to the node that sent the envelope.
    sample = FIXTURES / "ceb" / "CEB411Message.xml"
    out = env.cli("publish", "--file", str(sample), "--type", "411", "--format", "dxp")
    assert out.returncode == 0 and "in a DxpMsg from node DXPLGS0000000001" in out.stdout, out.stderr
    refusal = receipt_to("DXPLGS0000000001")
    assert ceb._local(refusal.tag) == "CEB900Message"
    assert refusal.findtext(".//{%s}returnStatus" % ceb.NS) == "-1001"
    # Without it (the XSD makes it optional on 411) the sample is accepted: a 412.
    root = etree.parse(str(sample)).getroot()
    root.remove(root.find("{http://www.w3.org/2000/09/xmldsig#}Signature"))
    unsigned = tmp_path / "CEB411Message.xml"
    unsigned.write_bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    out = env.cli("publish", "--file", str(unsigned), "--type", "411", "--format", "dxp")
    assert out.returncode == 0, out.stderr
    inner = receipt_to("DXPLGS0000000001", after=1)
    assert ceb._local(inner.tag) == "CEB412Message" and inner.findtext(".//{%s}returnStatus" % ceb.NS) == "2"
    # A file whose BaseTransfer names no node id short enough (the 311 sample's is 19 characters) needs --node.
    refused = env.cli("publish", "--file", str(FIXTURES / "ceb" / "CEB311Message.xml"), "--format", "dxp")
    assert refused.returncode != 0 and "--node" in refused.stderr


def test_a_signed_list_changed_on_the_way_is_refused_and_dead_lettered(env):
    o = make_order(990003, random.Random(7), prefix="SIGNED")
    signed = to_xml("621", [o.docs["621"]])
    tampered = signed.replace(b"<ceb:grossWeight>", b"<ceb:grossWeight>9", 1)
    pub = Publisher(env.settings, "json", batch=1)
    pub.send_raw("621", "TAMPERED", tampered)
    pub.send([o])  # the same order as JSON afterwards: the stream goes on
    pub.flush()
    Reader(env, registry.DECISIONS).read_until(lambda r: any(o.order_no.encode() in v for _, v in r), timeout=60)
    dead = [orjson.loads(v) for _, v in Reader(env, registry.DEADLETTER).drain(1.0)]
    mine = [d for d in dead if d["key"] == base64.b64encode(b"TAMPERED").decode()]
    assert [(d["reason"], d["returnStatus"]) for d in mine] == [("digest_mismatch", "-1004")]
    assert base64.b64decode(mine[0]["value"]) == tampered
    errors = [v for k, v in Reader(env, registry.RECEIPTS).drain(1.0) if k == "TAMPERED"]
    assert len(errors) == 1 and b"<ceb:returnStatus>-1004</ceb:returnStatus>" in errors[0]
    assert b"not what was signed" in errors[0]


def test_personal_data_never_leaves_in_clear(env):
    o = make_order(990001, random.Random(5), prefix="PII")
    pub = Publisher(env.settings, "json", batch=1)
    pub.send([o])
    pub.flush()
    Reader(env, registry.DECISIONS).read_until(
        lambda r: any(o.order_no.encode() in v for _, v in r), timeout=60)
    head = o.docs["311"][0]
    secrets = [head[f].encode() for f in ("buyerIdNumber", "buyerName", "buyerTelephone", "consigneeAddress")]
    secrets += [o.docs["411"][0]["payerIdNumber"].encode(), o.docs["511"][0]["consigneeTelephone"].encode()]
    # Every output topic except the dead-letter topic, whose job is to keep rejected input as it came.
    for spec in registry.OUTBOUND + registry.CONTROL:
        if spec is registry.DEADLETTER:
            continue
        for _, v in Reader(env, spec).drain(1.0):
            assert not any(s in v for s in secrets), spec.name
    metrics = env.metrics(0).encode()
    assert not any(s in metrics for s in secrets)
    log = open(env.workers[0][2], "rb").read()
    assert not any(s in log for s in secrets)
    r = redis.Redis.from_url(env.settings.redis_url)
    stored = b"".join(r.hgetall(state.order_key(o.ebp_code, o.order_no)).values())
    assert stored and not any(s in stored for s in secrets)  # Redis keeps hashes only


def test_bad_input_gets_error_receipt_and_dead_letter_and_the_worker_goes_on(env):
    pub = Publisher(env.settings, "json", batch=1)
    garbage = [b"\x00\xff not a message", b"<ceb:CEB311Message xmlns:ceb='http://www.chinaport.gov.cn/ceb'>",
               b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "c">]><a>&b;</a>',
               orjson.dumps({"PaymentHead": {"orderNo": 5}})]
    for g in garbage:
        pub.send_raw("311", "BADSENDER", g)
    good = make_order(990002, random.Random(6), prefix="AFTERBAD")
    pub.send([good])
    pub.flush()
    Reader(env, registry.DECISIONS).read_until(
        lambda r: any(good.order_no.encode() in v for _, v in r), timeout=60)
    dead = [orjson.loads(v) for _, v in Reader(env, registry.DEADLETTER).drain(1.0)]
    mine = base64.b64encode(b"BADSENDER").decode()
    reasons = [d["reason"] for d in dead if d["source"]["topic"].endswith("ceb.import.order") and d["key"] == mine]
    assert reasons == ["invisible_characters", "malformed_xml", "dtd_forbidden", "wrong_topic"]
    assert all(d["source"]["offset"] >= 0 and d["value"] for d in dead)
    errors = [v for k, v in Reader(env, registry.RECEIPTS).drain(1.0) if k == "BADSENDER"]
    returns = sum(len(orjson.loads(v)) if v.startswith(b"[") else v.count(b"<ceb:MessageReturn>") for v in errors)
    assert returns == 4
    assert all(b"MessageReturn" in v for v in errors)
    assert 'clearance_errors_total{reason="dtd_forbidden"}' in env.metrics(0)


def test_metrics_are_exported_with_conventional_names(env):
    text = env.metrics(0)
    for name in ("clearance_documents_consumed_total", "clearance_decisions_total",
                 "clearance_decision_latency_seconds_bucket", "clearance_pending_matches",
                 "clearance_match_timeouts_total", "clearance_errors_total", "clearance_consumer_lag_records"):
        assert name in text, name


def test_redis_memory_is_reported(env):
    # Read every 10 s by each worker; the test Redis runs without a maxmemory.
    found = None
    deadline = time.time() + 30
    while time.time() < deadline:
        text = env.metrics(0)
        found = re.search(r"^clearance_redis_used_memory_bytes (\S+)$", text, re.MULTILINE)
        if found and float(found.group(1)) > 0:
            break
        time.sleep(1)
    assert found and float(found.group(1)) > 0
    assert re.search(r"^clearance_redis_maxmemory_bytes 0\.0$", text, re.MULTILINE)


def test_exit_events_owed_by_the_gates_are_reported(env):
    # The gates' outbox (docs/release.md), read every 10 s by each worker with
    # Redis's memory: two events owed appear in the gauge, and leave it.
    def owed() -> float | None:
        found = re.search(r"^clearance_gate_exit_events_owed (\S+)$", env.metrics(0), re.MULTILINE)
        return float(found.group(1)) if found else None

    def until(value: float) -> float | None:
        deadline = time.time() + 30
        while time.time() < deadline and owed() != value:
            time.sleep(1)
        return owed()

    r = state.sync_client_for(env.settings)
    # The gauge counts every outbox in this Redis: other tests' gates may have left events owed.
    before = sum(r.zcard(state.exit_outbox_key(b)) for b in range(env.settings.redis_buckets))
    assert until(before) == before
    key = state.exit_outbox_key(3)
    r.zadd(key, {"YT-OWED-METRIC-1": 1, "YT-OWED-METRIC-2": 2})
    try:
        assert until(before + 2) == before + 2
    finally:
        r.zrem(key, "YT-OWED-METRIC-1", "YT-OWED-METRIC-2")
    assert until(before) == before


def test_dead_letters_are_listed_shown_masked_and_replayed_once(env):
    from confluent_kafka import Producer

    from streams import deadletter
    from streams.simulator import to_json

    rnd = random.Random(8)
    refused, lost = make_order(990003, rnd, prefix="DLQ"), make_order(990004, rnd, prefix="DLQ")
    buyer_id = refused.docs["311"][0]["buyerIdNumber"]
    pub = Publisher(env.settings, "json", batch=1)
    # A platform's order sent on the payment topic: the worker refuses it (wrong_topic).
    pub.send_raw("411", "DLQSENDER", to_json("311", [refused.docs["311"]]))
    pub.flush()
    # An order dead-lettered by a bug of ours (internal_error), written as the worker writes it.
    order_topic = env.topic(registry.ORDER)
    producer = Producer(env.settings.librdkafka_config())
    producer.produce(env.topic(registry.DEADLETTER), key=f"{order_topic}:0",
                     value=deadletter.record(order_topic, 0, 12345, int(time.time() * 1000), b"AA",
                                             to_json("311", [lost.docs["311"]]), "internal_error", "-9",
                                             "internal error: KeyError", "Unknown", int(time.time() * 1000)))
    # And one that claims to come from an output topic: never replayed there.
    producer.produce(env.topic(registry.DEADLETTER), key="x",
                     value=deadletter.record(env.topic(registry.RELEASE), 0, 1, 0, None, b"{}", "internal_error",
                                             "-9", "internal error", "Unknown", 0))
    producer.produce(env.topic(registry.DEADLETTER), key="junk", value=b"[1, 2]")  # not one of ours: listed as such
    producer.flush(10)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        letters = list(deadletter.read(env.settings))
        mine = [d for d in letters if d.key == b"DLQSENDER"]
        if mine:
            break
        time.sleep(0.5)
    assert mine and mine[0].record["reason"] == "wrong_topic"
    listed = env.cli("deadletter", "list")
    assert listed.returncode == 0, listed.stderr
    assert mine[0].id in listed.stdout and "wrong_topic" in listed.stdout and "2 internal_error" in listed.stdout
    assert "1 unreadable_dead_letter" in listed.stdout
    shown = env.cli("deadletter", "show", mine[0].id)
    assert refused.order_no in shown.stdout and "***" in shown.stdout and buyer_id not in shown.stdout
    assert buyer_id in env.cli("deadletter", "show", mine[0].id, "--reveal").stdout

    hostile = [d for d in letters if d.record.get("source", {}).get("topic") == env.topic(registry.RELEASE)]
    out = env.cli("deadletter", "replay", hostile[0].id)
    assert out.returncode == 1 and "not an inbound topic" in out.stdout
    assert env.cli("deadletter", "replay", "--reason", "internal_error", "--source", "ceb.import.order",
                   "--dry-run").stdout.startswith("would replay 1 ")
    # Its other three documents arrive and wait for it (replay within the match timeout, 4 s here).
    for t in ("411", "511", "621"):
        pub.send_raw(t, "AA", to_json(t, [lost.docs[t]]))
    pub.flush()
    out = env.cli("deadletter", "replay", "--reason", "internal_error", "--source", "ceb.import.order")
    assert out.returncode == 0 and out.stdout.startswith("replayed 1 "), out.stdout + out.stderr
    records = Reader(env, registry.DECISIONS).read_until(
        lambda r: any(lost.order_no.encode() in v for _, v in r), timeout=60)
    decided = [d for d in decisions_of(records) if d["orderNo"] == lost.order_no]
    assert [d["status"] for d in decided] == [lost.expected_status], decided
    assert not decided[0].get("missing")
    again = env.cli("deadletter", "replay", "--reason", "internal_error", "--source", "ceb.import.order")
    assert again.stdout.startswith("replayed 0 ") and "1 replayed before" in again.stdout
