"""CEB codec: official samples, XML ≡ JSON, size limits, hostile XML, JSON typing, receipts."""
from __future__ import annotations

import base64
import random

import orjson
import pytest
from lxml import etree

from processors import receipts
from streams.simulator import make_order, to_json, to_xml
from tests.conftest import FIXTURES
from tests.helpers import order
from topics import ceb

SAMPLES = FIXTURES / "ceb"


@pytest.mark.parametrize("code,count", [("311", 6), ("411", 10), ("511", 6), ("621", 10)])
def test_official_samples_parse_and_validate(code, count):
    # The samples' signatures are one copied placeholder (test_xmlsig.py): read without verifying them.
    msg = ceb.decode((SAMPLES / f"CEB{code}Message.xml").read_bytes(), signatures=False)
    assert msg.kind == code and msg.fmt == "xml"
    assert len(msg.documents) == count
    assert msg.sender == "1101180326"
    assert msg.documents[0].head["orderNo"]


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.xml")))
def test_every_official_import_sample_is_schema_valid(name):
    doc = etree.parse(str(SAMPLES / name), etree.XMLParser(resolve_entities=False, no_network=True))
    assert ceb.import_schema().validate(doc), ceb.import_schema().error_log.last_error


def test_order_sample_fields_are_exact():
    head = ceb.decode((SAMPLES / "CEB311Message.xml").read_bytes(), signatures=False).documents[0].head
    # 14000 + 5000 + 50 − 0 = 19050 in the official sample
    assert (head["goodsValue"], head["freight"], head["taxTotal"], head["acturalPaid"]) == \
        ("14000", "5000", "50", "19050")


@pytest.mark.parametrize("doc_type", ["311", "411", "511", "621"])
def test_xml_and_json_decode_to_the_same_documents(doc_type):
    docs = [order(i).docs[doc_type] for i in range(1, 6)]
    x, j = ceb.decode(to_xml(doc_type, docs)), ceb.decode(to_json(doc_type, docs))
    assert (x.fmt, j.fmt) == ("xml", "json")
    assert [(d.head, d.lines) for d in x.documents] == [(d.head, d.lines) for d in j.documents]


def test_decimals_are_canonical_across_forms():
    head, lines = order(1).docs["411"]
    as_number = dict(head, amountPaid=float(head["amountPaid"]))
    a = ceb.decode(orjson.dumps({"PaymentHead": as_number})).documents[0].head["amountPaid"]
    b = ceb.decode(to_xml("411", [(dict(head, amountPaid=head["amountPaid"] + "000"), [])])).documents[0]
    assert a == b.head["amountPaid"]


@pytest.mark.parametrize("gnum,packno,amount", [("01", "+1", " 1428.12 "), ("+1", "001", "\n1428.120\t"),
                                                 (" 1 ", " 1", "+1428.12")])
def test_xml_numbers_in_any_xsd_spelling_decode_as_the_json_form_does(gnum, packno, amount):
    # xs:int and xs:decimal collapse whitespace and allow a sign and leading
    # zeros: "01", "+1" and " 1 " are the line number 1, as JSON's 1 or "1" is.
    o = order(1)
    for t, field, spelled in (("311", "gnum", gnum), ("511", "packNo", packno), ("411", "amountPaid", amount)):
        head, lines = o.docs[t]
        canonical = ceb.decode(to_json(t, [(head, lines)])).documents[0]
        if field == "gnum":
            lines = [dict(line, gnum=spelled) if line["gnum"] == "1" else line for line in lines]
        else:
            head = dict(head, **{field: spelled})
        data = to_xml(t, [(head, lines)])
        if spelled != spelled.strip():  # to_xml escapes text; whitespace goes in as written
            assert spelled.encode() in data
        got = ceb.decode(data).documents[0]
        assert (got.head, got.lines) == (canonical.head, canonical.lines)


def _error(data: bytes) -> ceb.CebError:
    with pytest.raises(ceb.CebError) as exc:
        ceb.decode(data)
    return exc.value


def test_malformed_xml():
    e = _error(b"<ceb:CEB311Message xmlns:ceb='http://www.chinaport.gov.cn/ceb'><ceb:Order>")
    assert (e.status, e.reason) == (ceb.ERR_MALFORMED, "malformed_xml")


def test_xxe_is_refused_without_reading_the_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    data = (f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>'
            '<ceb:CEB311Message xmlns:ceb="http://www.chinaport.gov.cn/ceb">&x;</ceb:CEB311Message>').encode()
    e = _error(data)
    assert (e.status, e.reason) == (ceb.ERR_HOSTILE, "dtd_forbidden")
    assert "TOP-SECRET" not in e.info


def test_billion_laughs_is_refused():
    ents = "".join(f'<!ENTITY l{i} "{"&l%d;" % (i - 1) * 10}">' for i in range(1, 10))
    data = f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY l0 "ha">{ents}]><r>&l9;</r>'.encode()
    assert _error(data).reason == "dtd_forbidden"


def test_external_dtd_with_odd_spacing_is_refused():
    data = b'<?xml version="1.0"?>\n<!doctype r SYSTEM "http://127.0.0.1:1/evil.dtd"><r/>'
    assert _error(data).status == ceb.ERR_HOSTILE


def test_wrong_namespace_and_unknown_type():
    assert _error(b'<CEB311Message xmlns="urn:other"/>').reason == "wrong_namespace"
    e = _error(b'<ceb:CEB999Message xmlns:ceb="http://www.chinaport.gov.cn/ceb"/>')
    assert (e.status, e.reason) == (ceb.ERR_UNKNOWN_TYPE, "unknown_message_type")


def test_schema_invalid_xml_names_the_problem():
    head, lines = order(1).docs["311"]
    data = to_xml("311", [(dict(head, orderNo="X" * 61), lines)])
    e = _error(data)
    assert e.status == ceb.ERR_SCHEMA and "orderNo" in e.info


def test_more_than_100_documents_is_oversize():
    docs = [order(i).docs["411"] for i in range(101)]
    for data in (to_xml("411", docs), to_json("411", docs)):
        e = _error(data)
        assert (e.status, e.reason) == (ceb.ERR_OVERSIZE, "too_many_documents")


def test_more_than_99_lines_is_oversize():
    head, lines = order(1).docs["311"]
    many = [dict(lines[0], gnum=str(i)) for i in range(1, 101)]
    for data in (to_xml("311", [(head, many)]), to_json("311", [(head, many)])):
        assert _error(data).reason == "too_many_lines"


def test_malformed_json():
    assert _error(b'{"OrderHead": ').reason == "malformed_json"
    assert _error(b"[" * 5000 + b"]" * 5000).status in (ceb.ERR_MALFORMED, ceb.ERR_SCHEMA)


@pytest.mark.parametrize("change,needle", [
    ({"orderNo": 12345}, "Expected `str`, got `int` - at `$.OrderHead.orderNo`"),
    ({"goodsValue": "12,5"}, "Expected a decimal number as text - at `$.OrderHead.goodsValue`"),
    ({"goodsValue": True}, "got `bool`"),
    ({"goodsValue": "1" * 20}, "at most 19 digits"),
    ({"goodsValue": "1.123456"}, "5 after the point"),
    ({"goodsValue": 1e308}, "at most 19 digits"),
    ({"ebpCode": "E" * 19}, "length <= 18 - at `$.OrderHead.ebpCode`"),
    ({"appTime": "2025"}, "length >= 14"),
    ({"surprise": "x"}, "unknown field `surprise`"),
])
def test_json_types_and_lengths_follow_the_xsd(change, needle):
    head, lines = order(1).docs["311"]
    data = orjson.dumps({"OrderHead": dict(head, **change), "OrderList": lines})
    e = _error(data)
    assert e.status == ceb.ERR_SCHEMA and needle in e.info


@pytest.mark.parametrize("qty", ["1_000", " 12", "12\n", "1e3x", "--1", "."])
def test_numbers_as_text_are_checked_with_where_they_were(qty):
    # Checked once per spelling and remembered: a bad spelling is never remembered as good.
    docs = [order(i).docs["311"] for i in range(3)]
    head, lines = docs[1]
    docs[1] = (head, [lines[0], dict(lines[0], gnum="2", qty=qty)])
    for _ in range(2):
        e = _error(orjson.dumps([{"OrderHead": h, "OrderList": ls} for h, ls in docs]))
        assert e.status == ceb.ERR_SCHEMA
        assert "Expected a decimal number as text - at `$[1].OrderList[1].qty`" in e.info


def test_integers_as_text_are_checked():
    head, lines = order(1).docs["311"]
    e = _error(orjson.dumps({"OrderHead": head, "OrderList": [dict(lines[0], gnum="1_0")]}))
    assert "Expected an integer as text - at `$.OrderList[0].gnum`" in e.info
    ok = ceb.decode(orjson.dumps({"OrderHead": head, "OrderList": [dict(lines[0], gnum="+1")]}))
    assert ok.documents[0].lines[0]["gnum"] == "1"


def test_a_record_mixing_document_types_is_refused_and_a_mention_in_text_is_not():
    order_doc = order(1).docs["311"]
    payment_head = order(2).docs["411"][0]
    mixed = orjson.dumps([{"OrderHead": order_doc[0], "OrderList": order_doc[1]}, {"PaymentHead": payment_head}])
    e = _error(mixed)
    assert (e.status, e.reason, e.info) == (ceb.ERR_SCHEMA, "schema_invalid", "one record carries one document type only")
    # Another type's name inside a value is text, not a document.
    head = dict(order_doc[0], note='see "PaymentHead" of the payment')
    (doc,) = ceb.decode(orjson.dumps({"OrderHead": head, "OrderList": order_doc[1]})).documents
    assert doc.kind == "311" and "PaymentHead" in doc.head["note"]


def test_json_missing_required_field():
    head, lines = order(1).docs["311"]
    head = {k: v for k, v in head.items() if k != "buyerIdNumber"}
    e = _error(orjson.dumps({"OrderHead": head, "OrderList": lines}))
    assert "missing required field `buyerIdNumber`" in e.info


def test_json_line_int_type():
    head, lines = order(1).docs["311"]
    e = _error(orjson.dumps({"OrderHead": head, "OrderList": [dict(lines[0], gnum=1.5)]}))
    assert "got `float` - at `$.OrderList[0].gnum`" in e.info


def _validates(data: bytes) -> None:
    root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    assert ceb.import_schema().validate(root), ceb.import_schema().error_log.last_error


def test_xml_receipts_validate_against_the_xsd():
    o = make_order(3, random.Random(3))
    from processors.documents import normalise

    out = []
    for t, (head, lines) in o.docs.items():
        doc = normalise(t, head, lines, b"k")
        meta = {"fmt": "xml", "snd": "4601XXXXAA"}
        out.append(receipts.arrival_receipt(doc, meta, 1_780_000_000_000))
        out.append(receipts.document_receipt(doc, meta, "800", "放行", 1_780_000_000_000,
                                             "640120260000000001", "B20260101000000001"))
    out.append(receipts.error_receipt("x", "xml", "-2", "schema <invalid> & more", "CEB311Message", "t:0:1",
                                      1_780_000_000_000))
    encoded = ceb.encode_receipts(out)
    assert {k for k, _ in encoded} == {"4601XXXXAA", "x"}
    for _, data in encoded:
        _validates(data)


def test_receipts_are_chunked_at_100():
    doc = {"type": "411", "head": {"guid": "G" * 36, "payCode": "P", "payTransactionId": "T"}, "lines": []}
    rs = [receipts.document_receipt(doc, {"fmt": "json", "snd": "s"}, "2", "ok", 0) for _ in range(250)]
    chunks = ceb.encode_receipts(rs)
    assert [len(orjson.loads(v)) for _, v in chunks] == [100, 100, 50]


@pytest.mark.parametrize("fmt", ["xml", "dxp", "json"])
def test_an_error_receipt_echoing_characters_xml_cannot_carry_is_still_valid(fmt):
    # The record's key stands in for its sender when nothing else names one,
    # and the reason may quote the record: a NUL in either made the XML
    # receipt unreadable (found by tests/integration/test_fuzz.py).
    r = receipts.error_receipt("\x00K", fmt, "-1", "malformed: \x00\ufffe\ud800 here", "Unknown", "t:\x00:1", 0)
    ((to, value),) = ceb.encode_receipts([r])
    assert to == "\\u0000K"
    if fmt == "json":
        (entity,) = orjson.loads(value)
        assert entity["MessageReturn"]["returnInfo"] == "malformed: \\u0000\\ufffe\\ud800 here"
        return
    root = etree.fromstring(value)
    if fmt == "dxp":
        assert ceb.dxp_schema().validate(root)
        assert root.findtext(f"{{{ceb.DXP_NS}}}TransInfo/{{{ceb.DXP_NS}}}ReceiverIds/{{{ceb.DXP_NS}}}ReceiverId") \
            == "\\u0000K"
        root = etree.fromstring(base64.b64decode(root.findtext(f"{{{ceb.DXP_NS}}}Data")))
    assert ceb.import_schema().validate(root), ceb.import_schema().error_log.last_error
    assert root.findtext(f".//{{{ceb.NS}}}returnInfo") == "malformed: \\u0000\\ufffe\\ud800 here"
