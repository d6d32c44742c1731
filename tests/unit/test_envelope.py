"""CEB messages in the DxpMsg envelope of a customs data-exchange terminal node:
opened, checked like any record, refused with the envelope's sender and
message id, and answered in an envelope of their own."""
from __future__ import annotations

import base64
import random

import pytest
from lxml import etree

from processors import receipts
from processors.documents import normalise
from streams.simulator import dxp_sender, make_order, to_dxp, to_xml
from tests.conftest import FIXTURES
from topics import ceb

SAMPLES = FIXTURES / "ceb"  # the official import samples
PARSER = etree.XMLParser(resolve_entities=False, no_network=True)
ORDER = make_order(1, random.Random(1))


def envelope(inner: bytes | str, msg_type: str = "CEB311Message", sender: str = "DXPENT0000000001",
             cop: str = "COP-MSG-0001", data: str | None = None, trans_extra: str = "") -> bytes:
    """A DxpMsg as a terminal node writes it (Data wrapped at 76 characters)."""
    if data is None:
        data = base64.encodebytes(inner if isinstance(inner, bytes) else inner.encode()).decode()
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<dxp:DxpMsg ver="1.0" '
            'xmlns:dxp="http://www.chinaport.gov.cn/dxp"><dxp:TransInfo>'
            f"<dxp:CopMsgId>{cop}</dxp:CopMsgId><dxp:SenderId>{sender}</dxp:SenderId>"
            "<dxp:ReceiverIds><dxp:ReceiverId>DXPCLEARANCE0001</dxp:ReceiverId></dxp:ReceiverIds>"
            f"<dxp:CreatTime>2026-11-27T20:00:00</dxp:CreatTime><dxp:MsgType>{msg_type}</dxp:MsgType>{trans_extra}"
            f"</dxp:TransInfo><dxp:Data>{data}</dxp:Data></dxp:DxpMsg>").encode()


@pytest.mark.parametrize("name", ["CEB311Message", "CEB411Message", "CEB511Message", "CEB621Message",
                                  "CEB623Message", "CEB625Message"])
def test_official_samples_in_an_envelope_decode_as_they_do_bare(name):
    bare_bytes = (SAMPLES / f"{name}.xml").read_bytes()
    bare = ceb.decode(bare_bytes, signatures=False)  # a placeholder signature (test_xmlsig.py)
    msg = ceb.decode(envelope(bare_bytes, name, cop="C-" + name), signatures=False)
    assert msg.documents == bare.documents and msg.kind == bare.kind and msg.guid == bare.guid
    assert (msg.fmt, msg.sender) == ("dxp", "DXPENT0000000001")
    assert msg.envelope == ceb.Envelope("C-" + name, "DXPENT0000000001", name)


def test_an_empty_msg_type_is_allowed_and_a_gbk_message_inside_is_read():
    inner = to_xml("311", [ORDER.docs["311"]]).decode().replace('encoding="UTF-8"', 'encoding="GBK"').encode("gbk")
    msg = ceb.decode(envelope(inner, msg_type=""))
    assert msg.documents[0].head["ebpName"] == ORDER.docs["311"][0]["ebpName"]


def test_the_simulated_sender_wraps_what_the_decoder_opens():
    msg = ceb.decode(to_dxp("621", [ORDER.docs["621"]]), ("621",))
    assert msg.fmt == "dxp" and msg.sender == dxp_sender("621") == "DXP4601XXXXCC"
    assert msg.documents == ceb.decode(to_xml("621", [ORDER.docs["621"]])).documents


INNER = to_xml("311", [ORDER.docs["311"]])
REFUSED = [
    ("MsgType names another message", envelope(INNER, "CEB411Message"), "envelope_mismatch"),
    ("Data is not Base64", envelope(b"", data="PD94bWwg*notbase64*"), "envelope_invalid"),
    ("Data in Chinese", envelope(b"", data="数据"), "envelope_invalid"),
    ("Data with characters after its padding", envelope(b"", data="PD94bQ==PD94"), "envelope_invalid"),
    ("Data with an element inside", envelope(b"", data="PD94<dxp:X>bWwg</dxp:X>"), "envelope_invalid"),
    ("Data empty", envelope(b"", data=""), "envelope_invalid"),
    ("Data holds JSON", envelope(b'{"OrderHead": {}}'), "envelope_invalid"),
    ("Data holds another envelope", envelope(envelope(INNER)), "envelope_invalid"),
    ("no SenderId", envelope(INNER).replace(b"<dxp:SenderId>DXPENT0000000001</dxp:SenderId>", b""),
     "envelope_invalid"),
    ("SenderId over 16 characters", envelope(INNER, sender="DXP" + "9" * 14), "envelope_invalid"),
    ("an unknown element in TransInfo", envelope(INNER, trans_extra="<dxp:Extra>1</dxp:Extra>"), "envelope_invalid"),
    ("a zero-width space in SenderId as a character reference", envelope(INNER, sender="DXPENT0001&#x200B;"),
     "invisible_characters"),
    ("a DOCTYPE on the envelope", envelope(INNER).replace(
        b"<dxp:DxpMsg", b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><dxp:DxpMsg', 1), "dtd_forbidden"),
    ("a DOCTYPE in the message inside", envelope(INNER.replace(
        b"<ceb:CEB311Message", b'<!DOCTYPE d [<!ENTITY x "y">]><ceb:CEB311Message', 1)), "dtd_forbidden"),
    ("a schema-invalid message inside", envelope(INNER.replace(b"<ceb:orderNo>", b"<ceb:orderNumber>", 1)
                                                 .replace(b"</ceb:orderNo>", b"</ceb:orderNumber>", 1)),
     "schema_invalid"),
    ("a look-alike orderNo inside", envelope(to_xml("311", [({**ORDER.docs["311"][0], "orderNo": "ＨＮ１"},
                                                             ORDER.docs["311"][1])])), "lookalike_identifier"),
]


@pytest.mark.parametrize("name,data,reason", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_bad_envelope_or_message_is_refused_with_its_reason(name, data, reason):
    with pytest.raises(ceb.CebError) as exc:
        ceb.decode(data, ("311",))
    assert exc.value.reason == reason, exc.value.info
    assert int(exc.value.status) < 0 and "root:" not in exc.value.info


def test_a_refusal_inside_a_readable_envelope_names_its_sender_and_message_id():
    with pytest.raises(ceb.CebError) as exc:
        ceb.decode(envelope(INNER, "CEB411Message", cop="MSG-77"), ("311",))
    assert exc.value.envelope == ceb.Envelope("MSG-77", "DXPENT0000000001", "CEB411Message")
    with pytest.raises(ceb.CebError) as exc:  # refused before the inner type is known: the envelope names it
        ceb.decode(envelope(b"<ceb:CEB311Message", cop="MSG-78"), ("311",))
    assert exc.value.reason == "malformed_xml" and exc.value.message_type == "CEB311Message"
    assert exc.value.envelope.cop_msg_id == "MSG-78"
    with pytest.raises(ceb.CebError) as exc:  # the envelope itself unreadable: nothing to name
        ceb.decode(envelope(INNER, sender=""), ("311",))
    assert exc.value.envelope is None


def test_the_wrong_topic_is_refused_inside_an_envelope():
    with pytest.raises(ceb.CebError) as exc:
        ceb.decode(envelope(INNER), ("411",))
    assert exc.value.reason == "wrong_topic" and exc.value.envelope is not None


def _opened(data: bytes) -> tuple[etree._Element, etree._Element]:
    root = etree.fromstring(data, PARSER)
    assert ceb.dxp_schema().validate(root), ceb.dxp_schema().error_log.last_error
    inner = etree.fromstring(base64.b64decode(root.findtext(f"{{{ceb.DXP_NS}}}Data")), PARSER)
    assert ceb.import_schema().validate(inner), ceb.import_schema().error_log.last_error
    return root, inner


def test_receipts_to_a_dxp_sender_go_back_in_an_envelope_that_validates():
    meta = {"fmt": "dxp", "snd": dxp_sender("311")}
    doc = normalise("311", *ORDER.docs["311"], b"k")
    out = [receipts.arrival_receipt(doc, meta, 1_780_000_000_000),
           receipts.error_receipt(dxp_sender("411"), "dxp", "-2", "schema <invalid> & more", "CEB411Message",
                                  "MSG-9", 1_780_000_000_000)]
    encoded = dict(ceb.encode_receipts(out, "DXPCUSTOMS000001"))
    assert set(encoded) == {dxp_sender("311"), dxp_sender("411")}
    for to, data in encoded.items():
        root, inner = _opened(data)
        t = f"{{{ceb.DXP_NS}}}TransInfo/{{{ceb.DXP_NS}}}"
        assert root.findtext(t + "SenderId") == "DXPCUSTOMS000001"
        assert root.findtext(t + "ReceiverIds/{%s}ReceiverId" % ceb.DXP_NS) == to
        assert root.findtext(t + "MsgType") == ceb._local(inner.tag)
    _, inner = _opened(encoded[dxp_sender("411")])
    assert ceb._local(inner.tag) == "CEB900Message"
    assert inner.findtext(f".//{{{ceb.NS}}}oriCopMsgId") == "MSG-9"
    _, inner = _opened(encoded[dxp_sender("311")])
    assert ceb._local(inner.tag) == "CEB312Message"
    assert inner.findtext(f".//{{{ceb.NS}}}orderNo") == ORDER.order_no


def test_a_dead_envelope_is_shown_opened_so_its_personal_data_is_masked():
    from processors.documents import mask_personal
    from streams.deadletter import readable

    buyer_id = ORDER.docs["311"][0]["buyerIdNumber"]
    record = envelope(INNER, "CEB411Message")
    assert buyer_id.encode() not in record  # in Base64, where no mask would find it
    text = readable(record)
    assert buyer_id in text and "<dxp:MsgType>CEB411Message</dxp:MsgType>" in text
    assert buyer_id not in mask_personal(text) and ORDER.order_no in mask_personal(text)
    assert "not Base64" in readable(envelope(b"", data="PD9"))
    assert readable(INNER) == INNER.decode()


def _subscribed(message: bytes, *subs: tuple[str, str]) -> bytes:
    # BaseSubscribe follows BaseTransfer in every CEB message (the XSD's sequence).
    entries = "".join(f"<ceb:BaseSubscribe><ceb:status>{s}</ceb:status><ceb:dxpMode>DXP</ceb:dxpMode>"
                      f"<ceb:dxpAddress>{a}</ceb:dxpAddress></ceb:BaseSubscribe>" for s, a in subs)
    return message.replace(b"</ceb:BaseTransfer>", b"</ceb:BaseTransfer>" + entries.encode(), 1)


def test_basesubscribe_names_the_nodes_that_get_copies_of_the_receipts():
    message = _subscribed(INNER, ("RET", "DXPAGENT00000001"), ("DATA", "DXPDATA000000001"),
                          ("ALL", "DXPBOTH000000001"), ("RET", "DXPAGENT00000001"),
                          ("ret", "NOT-A-NODE-" + "X" * 20))  # the XSD allows five
    for data in (message, envelope(message)):
        msg = ceb.decode(data, ("311",))
        assert msg.subscribers == ("DXPAGENT00000001", "DXPBOTH000000001")
    assert ceb.decode(INNER).subscribers == ()
    with pytest.raises(ceb.CebError) as exc:  # a character reference cannot smuggle in an invisible node
        ceb.decode(_subscribed(INNER, ("RET", "DXPAGENT&#x200B;01")))
    assert exc.value.reason == "invisible_characters"
    with pytest.raises(ceb.CebError) as exc:  # nor in the node the message says it comes from (R13)
        ceb.decode(INNER.replace(b"</ceb:dxpId>", b"&#x2060;</ceb:dxpId>", 1))
    assert exc.value.reason == "invisible_characters"


def test_subscribers_get_each_receipt_in_an_envelope_and_the_sender_its_own():
    meta = {"fmt": "xml", "snd": "4601XXXXAA", "sub": ["DXPAGENT00000001", "4601XXXXAA"]}
    doc = normalise("311", *ORDER.docs["311"], b"k")
    arrival = receipts.arrival_receipt(doc, meta, 1_780_000_000_000)
    assert arrival["cc"] == ["DXPAGENT00000001"]  # the sender is not sent its receipt twice
    encoded = dict(ceb.encode_receipts([arrival], "DXPCUSTOMS000001"))
    assert set(encoded) == {"4601XXXXAA", "DXPAGENT00000001"}
    assert encoded["4601XXXXAA"].startswith(b"<?xml") and b"DxpMsg" not in encoded["4601XXXXAA"]
    root, inner = _opened(encoded["DXPAGENT00000001"])
    assert root.findtext(f"{{{ceb.DXP_NS}}}TransInfo/{{{ceb.DXP_NS}}}ReceiverIds/{{{ceb.DXP_NS}}}ReceiverId") \
        == "DXPAGENT00000001"
    assert inner.findtext(f".//{{{ceb.NS}}}orderNo") == ORDER.order_no
    # A list's final 622, answered after an officer's review from what the decision kept.
    inv = normalise("621", *ORDER.docs["621"], b"k")
    decision = {"status": 800, "reasons": [], "invtNo": "640120260000000001", "preNo": "B20260101000000001",
                "receipt": receipts.receipt_address(inv, {**meta, "snd": "4601XXXXCC"})}
    final = receipts.final_inventory_receipt(decision, 1_780_000_000_000)
    assert final["to"] == "4601XXXXCC" and final["cc"] == ["DXPAGENT00000001", "4601XXXXAA"]
    assert "sub" not in final["body"]
