"""Hostile and broken input: each case gets its expected error (status and reason),
and nothing else happens — no exception escapes, no file or network is touched."""
from __future__ import annotations

import copy

import orjson
import pytest

from streams.simulator import to_json, to_xml
from tests.helpers import order
from topics import ceb

NS = 'xmlns:ceb="http://www.chinaport.gov.cn/ceb"'
ORDER = order(1)


def jdoc(t: str, head_change: dict | None = None, line_change: dict | None = None, drop: str = "",
         lines: list | None = None) -> bytes:
    head, ls = copy.deepcopy(ORDER.docs[t])
    head.update(head_change or {})
    if drop:
        head.pop(drop)
    if line_change and ls:
        ls[0].update(line_change)
    return to_json(t, [(head, lines if lines is not None else ls)])


def xdoc(t: str, head_change: dict | None = None, line_change: dict | None = None) -> bytes:
    head, ls = copy.deepcopy(ORDER.docs[t])
    head.update(head_change or {})
    if line_change and ls:
        ls[0].update(line_change)
    return to_xml(t, [(head, ls)])


def raw_order(text: str) -> bytes:
    return to_xml("311", [ORDER.docs["311"]]).replace(b"</ceb:orderNo>", text.encode() + b"</ceb:orderNo>", 1)


CASES: list[tuple[str, bytes, tuple[str, ...], str]] = [
    # --- malformed
    ("empty record", b"", ("311",), "malformed_json"),
    ("whitespace only", b"   \n", ("311",), "malformed_json"),
    ("truncated JSON", jdoc("311")[:200], ("311",), "malformed_json"),
    ("JSON trailing comma", b'{"OrderHead": {"orderNo": "x",}}', ("311",), "malformed_json"),
    ("JSON with comments", b'{"OrderHead": /* c */ {}}', ("311",), "malformed_json"),
    ("JSON NaN literal", jdoc("411").replace(b'"amountPaid":"', b'"amountPaid":NaN,"x":"'), ("411",), "malformed_json"),
    ("JSON Infinity literal", b'{"PaymentHead": {"amountPaid": Infinity}}', ("411",), "malformed_json"),
    ("truncated XML", xdoc("311")[:300], ("311",), "malformed_xml"),
    ("XML mismatched tags", f"<ceb:CEB311Message {NS}><ceb:Order></ceb:Orde></ceb:CEB311Message>".encode(),
     ("311",), "malformed_xml"),
    ("binary garbage", bytes(range(128, 256)) * 4, ("311",), "malformed_json"),
    ("invalid UTF-8 in JSON", b'{"OrderHead": {"orderNo": "\xff\xfe"}}', ("311",), "malformed_json"),
    ("deeply nested JSON", b"[" * 100000 + b"]" * 100000, ("311",), "malformed_json"),
    ("JSON scalar", b"42", ("311",), "unknown_message_type"),
    ("JSON array of numbers", b"[1, 2, 3]", ("311",), "unknown_message_type"),
    # --- hostile XML
    ("XXE file", b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
     ("311",), "dtd_forbidden"),
    ("XXE network", b'<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:1/x">]><r>&x;</r>', ("311",), "dtd_forbidden"),
    ("external DTD", b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:1/r.dtd"><r/>', ("311",),
     "dtd_forbidden"),
    ("parameter entity", b'<!DOCTYPE r [<!ENTITY % p SYSTEM "file:///etc/hosts"> %p;]><r/>', ("311",),
     "dtd_forbidden"),
    ("billion laughs", b'<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
     b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><l>&c;</l>', ("311",), "dtd_forbidden"),
    ("lower-case doctype late in record", b"<r>" + b" " * 70000 + b"<!doctype x></r>", ("311",), "dtd_forbidden"),
    ("XInclude", f'<ceb:CEB311Message {NS} xmlns:xi="http://www.w3.org/2001/XInclude">'
     '<xi:include href="file:///etc/passwd"/></ceb:CEB311Message>'.encode(), ("311",), "schema_invalid"),
    ("huge record", b" " * (ceb.MAX_RECORD_BYTES + 1), ("311",), "record_too_large"),
    ("huge text node", raw_order("x" * 200_000), ("311",), "schema_invalid"),
    # --- type, namespace, topic
    ("wrong namespace", b'<CEB311Message xmlns="urn:not-ceb"/>', ("311",), "wrong_namespace"),
    ("no namespace", b"<CEB311Message/>", ("311",), "wrong_namespace"),
    ("unknown message type", f"<ceb:CEB999Message {NS}/>".encode(), ("311",), "unknown_message_type"),
    ("export message on import topic", f"<ceb:CEB303Message {NS}/>".encode(), ("311",), "unknown_message_type"),
    ("order on payment topic (XML)", xdoc("311"), ("411",), "wrong_topic"),
    ("payment on order topic (JSON)", jdoc("411"), ("311",), "wrong_topic"),
    ("two document types in one JSON record", orjson.dumps([orjson.loads(jdoc("411")), orjson.loads(jdoc("511"))]),
     ("411",), "schema_invalid"),
    # --- size
    ("101 documents", to_json("411", [ORDER.docs["411"]] * 101), ("411",), "too_many_documents"),
    ("101 documents XML", to_xml("411", [ORDER.docs["411"]] * 101), ("411",), "too_many_documents"),
    ("100 order lines", jdoc("311", lines=[dict(ORDER.docs["311"][1][0], gnum=str(i)) for i in range(1, 101)]),
     ("311",), "too_many_lines"),
    ("order without lines", jdoc("311", lines=[]), ("311",), "schema_invalid"),
    # --- fields
    ("missing required field", jdoc("311", drop="buyerIdNumber"), ("311",), "schema_invalid"),
    ("missing required field XML", xdoc("411").replace(b"<ceb:payerName>", b"<ceb:x>").replace(
        b"</ceb:payerName>", b"</ceb:x>"), ("411",), "schema_invalid"),
    ("unknown field", jdoc("311", {"discountCode": "X"}), ("311",), "schema_invalid"),
    ("number for a string", jdoc("311", {"orderNo": 12345}), ("311",), "schema_invalid"),
    ("object for a string", jdoc("311", {"orderNo": {"$gt": ""}}), ("311",), "schema_invalid"),
    ("list for a string", jdoc("311", {"ebpCode": ["a"]}), ("311",), "schema_invalid"),
    ("too long orderNo", jdoc("311", {"orderNo": "N" * 61}), ("311",), "schema_invalid"),
    ("too short guid", jdoc("311", {"guid": "ABC"}), ("311",), "schema_invalid"),
    ("boolean amount", jdoc("411", {"amountPaid": True}), ("411",), "schema_invalid"),
    ("text amount", jdoc("411", {"amountPaid": "one hundred"}), ("411",), "schema_invalid"),
    ("comma decimal", jdoc("411", {"amountPaid": "100,50"}), ("411",), "schema_invalid"),
    ("1e308 amount", jdoc("411", {"amountPaid": 1e308}), ("411",), "schema_invalid"),
    ("20-digit amount", jdoc("411", {"amountPaid": "12345678901234567890"}), ("411",), "schema_invalid"),
    ("6 fraction digits", jdoc("411", {"amountPaid": "1.123456"}), ("411",), "schema_invalid"),
    ("negative amount JSON", jdoc("411", {"amountPaid": "-318.21"}), ("411",), "negative_amount"),
    ("negative amount XML", xdoc("311", {"freight": "-10"}), ("311",), "negative_amount"),
    ("negative quantity", jdoc("311", line_change={"qty": -1}), ("311",), "negative_amount"),
    ("float line number", jdoc("311", line_change={"gnum": 1.5}), ("311",), "schema_invalid"),
    ("malformed date", jdoc("411", {"appTime": "2026-11-26T10Z"}), ("411",), "invalid_date"),
    ("impossible date", jdoc("411", {"appTime": "20260230101500"}), ("411",), "invalid_date"),
    ("impossible hour", jdoc("411", {"payTime": "20261126250000"}), ("411",), "invalid_date"),
    ("date in the future", jdoc("411", {"appTime": "20991231235959"}), ("411",), "future_date"),
    ("appType outside add/change/delete", jdoc("311", {"appType": "9"}), ("311",), "invalid_app_type"),
    ("appType outside add/change/delete (XML)", xdoc("511", {"appType": "0"}), ("511",), "invalid_app_type"),
    ("declaration date in the future", xdoc("621", {"declTime": "20991231"}), ("621",), "future_date"),
    # --- encodings and invisible characters
    ("zero-width space in orderNo", jdoc("311", {"orderNo": ORDER.order_no + "\u200b"}), ("311",), "invisible_characters"),
    ("escaped zero-width space", jdoc("311").replace(ORDER.order_no.encode(), ORDER.order_no.encode() + b"\\u200b"),
     ("311",), "invisible_characters"),
    ("bidi override in name", jdoc("311", {"ebpName": "平台\u202egnp.exe"}), ("311",), "invisible_characters"),
    ("NUL byte in XML", raw_order("\x00"), ("311",), "invisible_characters"),
    ("escaped NUL in JSON", jdoc("311").replace(ORDER.order_no.encode(), ORDER.order_no.encode() + b"\\u0000"),
     ("311",), "invisible_characters"),
    ("BOM inside a value", jdoc("311", {"orderNo": "\ufeff" + ORDER.order_no}), ("311",), "invisible_characters"),
    # The key separator (U+001F) cannot reach a Redis key: another platform's key is not forgeable.
    ("key separator in ebpCode", jdoc("311", {"ebpCode": "4601XXXXAA\x1fX"}), ("311",), "invisible_characters"),
    ("escaped key separator in orderNo", jdoc("411").replace(ORDER.order_no.encode(),
                                                             ORDER.order_no.encode() + b"\\u001f"),
     ("411",), "invisible_characters"),
    ("key separator in logisticsNo (XML)", xdoc("511", {"logisticsNo": "YT1\x1fYT2"}), ("511",), "invisible_characters"),
    ("GBK bytes declared as UTF-8", xdoc("311").replace("示例".encode(), "示例".encode("gbk")), ("311",),
     "malformed_xml"),
    # Spelt as an XML character reference, the parser would hand over the character itself.
    ("zero-width space as a hex character reference", raw_order("&#x200B;"), ("311",), "invisible_characters"),
    ("zero-width space as a decimal character reference", raw_order("&#8203;"), ("311",), "invisible_characters"),
    ("bidi isolate as a character reference", raw_order("&#x2066;"), ("311",), "invisible_characters"),
    ("DEL as a character reference", raw_order("&#127;"), ("311",), "invisible_characters"),
    # Trojan Source (CVE-2021-42574) uses the isolates U+2066-2069 as well as the overrides.
    ("bidi isolate in a name", jdoc("311", {"ebpName": "平台\u2067exe.gnp\u2069"}), ("311",), "invisible_characters"),
    ("soft hyphen in orderNo (XML)", raw_order("\u00ad"), ("311",), "invisible_characters"),
    ("C1 control NEL in orderNo", jdoc("311", {"orderNo": ORDER.order_no + "\u0085"}), ("311",),
     "invisible_characters"),
    ("line separator in an address", jdoc("311", {"consigneeAddress": "海口市\u2028龙华区"}), ("311",),
     "invisible_characters"),
    ("backspace as a JSON short escape", jdoc("311", {"orderNo": ORDER.order_no + "\b"}), ("311",),
     "invisible_characters"),
    ("tag character as an escaped surrogate pair", jdoc("311").replace(
        ORDER.order_no.encode(), ORDER.order_no.encode() + b"\\udb40\\udc41"), ("311",), "invisible_characters"),
    ("zero-width space in XML declared GB18030", xdoc("311", {"orderNo": ORDER.order_no + "\u200b"}).replace(
        b'encoding="UTF-8"', b'encoding="GB18030"').decode().encode("gb18030"), ("311",), "invisible_characters"),
    ("XML in an unknown encoding", xdoc("311").replace(b'encoding="UTF-8"', b'encoding="KLINGON"'), ("311",),
     "malformed_xml"),
    # Not an encoding name at all (a NUL made codecs.lookup raise ValueError: an internal error).
    ("XML encoding name with a NUL", xdoc("311").replace(b'encoding="UTF-8"', b'encoding="\x00UTF-8"'), ("311",),
     "malformed_xml"),
    # A repeated member reads as its last value here and as its first elsewhere.
    ("repeated member in a head", jdoc("411").replace(b'"amountPaid":', b'"amountPaid":"1","amountPaid":', 1),
     ("411",), "duplicate_key"),
    ("repeated member in a line", jdoc("311").replace(b'"qty":', b'"qty":"9","qty":', 1), ("311",), "duplicate_key"),
    ("repeated head", jdoc("411")[:-1] + b',"PaymentHead":' + jdoc("411", {"amountPaid": "1"})[15:], ("411",),
     "duplicate_key"),
    ("repeated member, spaced and with a null elsewhere", jdoc("411").replace(
        b'"amountPaid":', b'"note":null,"amountPaid" : "1", "amountPaid":', 1), ("411",), "duplicate_key"),
    ("repeated member, an escaped colon elsewhere", jdoc("411").replace(
        b'"amountPaid":', b'"amountPaid":"1","amountPaid":', 1).replace(b'"payName":"', b'"payName":"a\\u003a', 1),
     ("411",), "duplicate_key"),
    # A padded identifier is another key that reads the same.
    ("orderNo with a leading space", jdoc("411", {"orderNo": " " + ORDER.order_no}), ("411",), "padded_identifier"),
    ("logisticsNo with a trailing ideographic space (XML)", xdoc("511", {"logisticsNo": "YT1\u3000"}), ("511",),
     "padded_identifier"),
    ("ebpCode with a trailing tab (XML)", xdoc("621", {"ebpCode": ORDER.docs["621"][0]["ebpCode"] + "\t"}),
     ("621",), "padded_identifier"),
    # Compatibility characters read as their plain twins but are other keys.
    ("orderNo in full-width letters and digits", jdoc("411", {"orderNo": ORDER.order_no.translate(
        {c: c + 0xFEE0 for c in range(0x21, 0x7F)})}), ("411",), "lookalike_identifier"),
    ("one full-width digit in a logisticsNo (XML)", xdoc("511", {"logisticsNo": "YT１2345"}), ("511",),
     "lookalike_identifier"),
    ("a circled digit in payTransactionId", jdoc("411", {"payTransactionId": "PAY①"}), ("411",),
     "lookalike_identifier"),
    ("a CJK compatibility ideograph in ebcCode (XML)", xdoc("621", {"ebcCode": "4601\uf900"}), ("621",),
     "lookalike_identifier"),
    # Letters of other scripts that NFKC leaves alone read as ASCII ones.
    ("a Cyrillic letter in an orderNo", jdoc("411", {"orderNo": "\u041d" + ORDER.order_no[1:]}), ("411",),
     "lookalike_identifier"),
    ("a Greek capital alpha in ebpCode (XML)", xdoc("621", {"ebpCode": "4601XXXX\u0391A"}), ("621",),
     "lookalike_identifier"),
    ("an accented letter in a logisticsNo", jdoc("511", {"logisticsNo": "YT12\u00e93"}), ("511",),
     "lookalike_identifier"),
    ("a combining acute accent on an ASCII letter (XML)", xdoc("511", {"logisticsNo": "YT12e\u03013"}), ("511",),
     "lookalike_identifier"),
    ("Arabic-Indic digits in payTransactionId", jdoc("411", {"payTransactionId": "PAY\u0661\u0662"}), ("411",),
     "lookalike_identifier"),
    ("a private-use character in an orderNo (XML)", xdoc("311", {"orderNo": "HN\ue000001"}), ("311",),
     "lookalike_identifier"),
    ("XML in UTF-16", xdoc("311").decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"),
     ("311",), "not_utf8"),
    ("JSON in UTF-16", jdoc("311").decode().encode("utf-16"), ("311",), "not_utf8"),
]


def test_the_corpus_has_at_least_fifty_cases():
    assert len(CASES) >= 50


@pytest.mark.parametrize("name,data,accepts,reason", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_with_its_reason(name, data, accepts, reason):
    with pytest.raises(ceb.CebError) as exc:
        ceb.decode(data, accepts)
    assert exc.value.reason == reason, exc.value.info
    assert int(exc.value.status) < 0 and exc.value.info
    assert "root:" not in exc.value.info  # no file content ever leaks into a receipt


def test_identifiers_in_chinese_are_plain_text():
    # orderNo is C..60: a platform may number orders with Chinese text and the
    # full-width punctuation Chinese input methods type, the ideographic zero
    # and the Hangzhou numerals; only compatibility letters and digits, which
    # read as their plain twins, and letters of other scripts are refused.
    for value in ("海南订单（一）001", "二〇二六年〡号", "𠀀-々"):
        for data in (jdoc("411", {"orderNo": value}), xdoc("411", {"orderNo": value})):
            assert ceb.decode(data, ("411",)).documents[0].head["orderNo"] == value


def test_a_letter_of_another_script_is_named_in_the_receipt():
    with pytest.raises(ceb.CebError) as exc:
        ceb.decode(jdoc("411", {"orderNo": "\u041d" + ORDER.order_no[1:]}), ("411",))
    assert "U+041D CYRILLIC CAPITAL LETTER EN" in exc.value.info and "orderNo" in exc.value.info


def test_a_leading_bom_is_fine():
    # RFC 8259 lets a JSON reader ignore one; Windows tools write it.
    assert ceb.decode(b"\xef\xbb\xbf" + xdoc("411"), ("411",)).documents
    assert ceb.decode(b"\xef\xbb\xbf" + jdoc("411"), ("411",)).documents == ceb.decode(jdoc("411")).documents


def test_xml_declared_in_gbk_is_read_as_gbk():
    data = xdoc("311").replace(b'encoding="UTF-8"', b'encoding="GBK"')
    data = data.decode("utf-8").encode("gbk")
    assert ceb.decode(data, ("311",)).documents[0].head["ebpName"] == ORDER.docs["311"][0]["ebpName"]


@pytest.mark.parametrize("text", ["平台（海南）有限公司，自营", "海口市\u3000龙华区", "约翰·史密斯", "“正品”—保税仓…",
                                  "¥100", "\u00a0", "𠀀", "C:\\bin\\file"])
def test_ordinary_text_is_not_taken_for_invisible_characters(text):
    # Full-width punctuation, the ideographic space, the middle dot of foreign
    # names, quotes and dashes share lead bytes with forbidden characters; an
    # escaped backslash before "b" or "f" is not a control.
    for data in (jdoc("311", {"ebpName": text}), xdoc("311", {"ebpName": text})):
        assert ceb.decode(data, ("311",)).documents[0].head["ebpName"] == text


def test_the_forbidden_set_is_unicodes_controls_format_characters_and_separators():
    import unicodedata

    expected = {chr(c) for c in range(0x110000)
                if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp") and chr(c) not in "\t\n\r"}
    assert expected <= ceb.FORBIDDEN_CHARS
    # The table is Unicode 15.0's; on an older unicodedata its newer entries are unassigned.
    assert {unicodedata.category(ch) for ch in ceb.FORBIDDEN_CHARS - expected} <= {"Cn"}


@pytest.mark.parametrize("change", [
    lambda d: d.replace(b'"payName":"', b'"payName":"a:b\\u003ac ', 1),  # colons, one escaped, in a value
    lambda d: d.replace(b'"payName":"', b'"note":null,"payName":"', 1),  # an explicit null
    lambda d: orjson.dumps(orjson.loads(d), option=orjson.OPT_INDENT_2),  # pretty-printed
    lambda d: d.replace(b'"payName":"', b'"payName":"\\\\u003a', 1),  # the text \u003a, not a colon
])
def test_records_without_a_repeated_member_decode(change):
    data = change(jdoc("411"))
    assert ceb.decode(data, ("411",)).documents[0].head["amountPaid"] == ceb.decode(jdoc("411")).documents[0].head[
        "amountPaid"]
