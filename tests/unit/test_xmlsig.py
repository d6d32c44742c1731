"""XML signatures: SM2-with-SM3 and RSA verified against signatures made by
other implementations (OpenSSL, signxml), and every way a signed message can
be altered refused with its own code."""
from __future__ import annotations

import base64
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from config.settings import load_settings
from processors import features, ruleset
from streams import simulator
from streams.simulator import make_order, to_xml
from tests.conftest import FIXTURES
from topics import ceb, xmlsig

DS = "{%s}" % xmlsig.DS_NS
ORDERS = [make_order(i, random.Random(i), prefix="SIG") for i in range(1, 4)]
DEMO_CERT = base64.b64decode(simulator._SIGNER["certificate"])
DEMO_FINGERPRINT = "a6e39b2f8a18f6edde871490e5fceae6790a0c67da6dff05056ce56fc436c06f"

# Made with OpenSSL 3.0.19 by the demo signer's key:
#   openssl pkeyutl -sign -rawin -digest sm3 -pkeyopt distid:1234567812345678 -inkey KEY -in MSG
OPENSSL_MESSAGE = b"SignedInfo bytes for the test"
OPENSSL_SM2_SIGNATURE = bytes.fromhex(
    "304502205e4e08fef603c6e719ae13ebc7c74f345f87b9110d3a0fc331fb16c65365c980022100c82560fded4371caeeba"
    "cfb35b379ae2e209a4d4873c5bfd89e62dce1927b423")


def signed_621() -> bytes:
    return to_xml("621", [o.docs["621"] for o in ORDERS])


def refused(data: bytes) -> ceb.CebError:
    with pytest.raises(ceb.CebError) as exc:
        ceb.decode(data)
    return exc.value


def test_the_certificate_is_read_and_its_own_openssl_signature_verifies():
    cert = xmlsig.parse_certificate(DEMO_CERT)
    assert cert.algorithm == "sm2" and cert.fingerprint == DEMO_FINGERPRINT
    assert cert.not_before.year == 2026 and cert.not_after.year == 2046
    # The certificate is self-signed by OpenSSL (SM2-with-SM3, ID 1234567812345678): its
    # signature over tbsCertificate is an SM2 signature this module did not make.
    _, start, end = xmlsig._tlv(DEMO_CERT, 0)
    (_, ts, te), _, (_, bs, be) = xmlsig._children(DEMO_CERT, start, end)
    tbs = DEMO_CERT[start:te]
    r, s = xmlsig._sm2_rs(DEMO_CERT[bs + 1:be])
    assert xmlsig.sm2_verify(cert.key, tbs, r, s)
    assert not xmlsig.sm2_verify(cert.key, tbs + b"\0", r, s)


def test_an_openssl_sm2_signature_verifies_and_a_changed_message_does_not():
    key = xmlsig.parse_certificate(DEMO_CERT).key
    r, s = xmlsig._sm2_rs(OPENSSL_SM2_SIGNATURE)
    assert xmlsig.sm2_verify(key, OPENSSL_MESSAGE, r, s)
    assert not xmlsig.sm2_verify(key, OPENSSL_MESSAGE + b".", r, s)
    assert not xmlsig.sm2_verify(key, OPENSSL_MESSAGE, r, (s + 1) % xmlsig.N)
    assert not xmlsig.sm2_verify(key, OPENSSL_MESSAGE, r, s, uid=b"ALICE123@YAHOO.COM")  # another signer ID
    assert not xmlsig.sm2_verify(key, OPENSSL_MESSAGE, 0, s)


def test_sm2_signatures_made_here_verify_in_both_encodings():
    d = random.Random(3).randrange(1, xmlsig.N)
    r, s = xmlsig.sm2_sign(d, b"message")
    point = xmlsig.sm2_public(d)
    assert xmlsig._on_curve(point)
    assert xmlsig.sm2_verify(point, b"message", r, s)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert xmlsig._sm2_rs(raw) == (r, s)
    assert xmlsig._sm2_rs(OPENSSL_SM2_SIGNATURE)[0] == int.from_bytes(OPENSSL_SM2_SIGNATURE[4:36], "big")
    with pytest.raises(ValueError):
        xmlsig._sm2_rs(b"\x30\x03\x02\x01\x01")


def test_a_message_signed_by_signxml_with_rsa_sha256_verifies():
    # Signed with signxml 5.2.0 (enveloped, C14N 1.0, RSA-SHA256) in a scratch
    # environment, from the simulator's unsigned 621: an independent XML-DSig.
    data = (FIXTURES / "xmlsig" / "signxml-rsa-sha256-621.xml").read_bytes()
    msg = ceb.decode(data)
    assert msg.kind == "621" and len(msg.documents) == 2 and len(msg.signer) == 64
    err = refused(data.replace(b"<ceb:qty>", b"<ceb:qty>1", 1))
    assert (err.status, err.reason, err.message_type) == ("-1004", "digest_mismatch", "CEB621Message")


def test_the_simulator_signs_as_the_register_expects():
    msg = ceb.decode(signed_621())
    assert msg.signer == DEMO_FINGERPRINT and msg.cop_code == "4601XXXXCC"
    assert ceb.decode(to_xml("311", [ORDERS[0].docs["311"]])).signer == ""  # optional there, not signed


def test_a_changed_document_is_refused_as_not_what_was_signed():
    data = signed_621()
    name = ORDERS[0].docs["621"][0]["buyerName"].encode()
    err = refused(data.replace(name, "张三丰".encode(), 1))
    assert (err.status, err.reason) == ("-1004", "digest_mismatch")
    assert "not what was signed" in err.info


def test_a_message_with_no_canonical_form_is_refused_with_a_receipt():
    # A relative namespace URI is well-formed and schema-valid, but C14N 1.0
    # refuses it: no signer can have signed its canonical form (found by
    # fuzzing; lxml's C14NError had become an internal error).
    data = signed_621().replace(b"<ceb:CEB621Message ", b'<ceb:CEB621Message xmlns:a="b" ', 1)
    err = refused(data)
    assert (err.status, err.reason) == ("-1001", "signature_invalid")
    assert "canonical form" in err.info


def test_a_digest_made_to_match_fails_the_signature():
    root = etree.fromstring(signed_621())
    root.find(f".//{{{ceb.NS}}}InventoryHead/{{{ceb.NS}}}grossWeight").text = "0.01"
    sig = root.find(DS + "Signature")
    sig.find(f".//{DS}DigestValue").text = base64.b64encode(
        xmlsig._sm3(xmlsig.signed_content(root, sig))).decode()
    err = refused(etree.tostring(root))
    assert (err.status, err.reason) == ("-1004", "signature_mismatch")


def test_a_signature_by_another_key_under_the_demo_certificate_is_refused():
    root = etree.fromstring(to_xml("621", [ORDERS[0].docs["621"]], signed=False))
    xmlsig.sign_sm2(root, 12345678987654321, DEMO_CERT)
    err = refused(etree.tostring(root))
    assert (err.status, err.reason) == ("-1004", "signature_mismatch")


def test_an_expired_certificate_and_unsupported_algorithms_are_refused():
    root = etree.fromstring(signed_621())
    with pytest.raises(xmlsig.SignatureError) as exc:
        xmlsig.verify(root, time.mktime((2047, 1, 1, 0, 0, 0, 0, 0, 0)))
    assert (exc.value.status, exc.value.reason) == ("-1002", "certificate_expired")
    method = root.find(f".//{DS}SignatureMethod")
    method.set("Algorithm", "http://www.w3.org/2000/09/xmldsig#dsa-sha1")
    err = refused(etree.tostring(root))
    assert (err.status, err.reason) == ("-1001", "signature_unsupported")
    method.set("Algorithm", xmlsig.RSA_SHA1)  # an RSA method with the SM2 certificate
    assert refused(etree.tostring(root)).reason == "signature_invalid"


def test_a_signature_without_a_certificate_or_with_a_partial_reference_is_refused():
    root = etree.fromstring(signed_621())
    root.find(f".//{DS}Reference").set("URI", "#part")
    assert refused(etree.tostring(root)).reason == "signature_unsupported"
    root = etree.fromstring(signed_621())
    cert = root.find(f".//{DS}X509Data")
    cert.getparent().remove(cert)
    err = refused(etree.tostring(root))
    assert (err.status, err.reason) == ("-1001", "signature_invalid") and "X509Certificate" in err.info
    root = etree.fromstring(signed_621())
    root.find(f".//{DS}X509Certificate").text = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
    assert refused(etree.tostring(root)).reason == "certificate_invalid"


def test_text_around_the_signature_and_processing_instructions_are_part_of_what_was_signed():
    unsigned = to_xml("621", [ORDERS[0].docs["621"]], signed=False)
    root = etree.fromstring(unsigned.replace(b"</ceb:BaseTransfer>", b"</ceb:BaseTransfer><?audit step=1?>\n  "))
    xmlsig.sign_sm2(root, simulator._SIGNER_KEY, DEMO_CERT)
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    assert b"<?audit step=1?>\n  <ds:Signature" in data
    assert ceb.decode(data).signer == DEMO_FINGERPRINT  # the PI is read back for the digest
    assert refused(data.replace(b"step=1", b"step=2")).reason == "digest_mismatch"
    assert refused(data.replace(b"?>\n  <ds:Signature", b"?>\n<ds:Signature")).reason == "digest_mismatch"
    assert refused(data.replace(b"</ds:Signature>", b"</ds:Signature>\n")).reason == "digest_mismatch"
    # The enveloped transform removes the element and keeps the text after it.
    sig = root.find(DS + "Signature")
    sig.tail = "\n"
    assert xmlsig.signed_content(root, sig).endswith(b"  \n</ceb:CEB621Message>")
    assert sig.tail == "\n" and root[-1] is sig
    # Comments are outside what URI="" signs: one added after signing changes nothing.
    assert ceb.decode(data.replace(b"<ceb:BaseTransfer>", b"<!-- routed --><ceb:BaseTransfer>")).signer


def test_the_official_samples_carry_a_placeholder_signature_that_verification_refuses():
    # All of them carry the same DigestValue and SignatureValue, an SM2 method
    # over an RSA certificate: copied into each sample, made for none.
    values = set()
    for name in ("CEB311Message", "CEB621Message", "CEB623Message", "CEB625Message"):
        data = (FIXTURES / "ceb" / f"{name}.xml").read_bytes()
        values.add(etree.fromstring(data).findtext(f".//{DS}DigestValue"))
        err = refused(data)
        assert (err.status, err.reason, err.message_type) == ("-1001", "signature_invalid", name)
        assert ceb.decode(data, signatures=False).kind == name[3:6]
    assert len(values) == 1


def test_the_setting_is_verify_by_default_and_refuses_other_values():
    assert load_settings({}).signatures == "verify"
    assert load_settings({"CLEARANCE_SIGNATURES": "off"}).signatures == "off"
    with pytest.raises(ValueError, match="CLEARANCE_SIGNATURES"):
        load_settings({"CLEARANCE_SIGNATURES": "maybe"})


def test_r13_holds_the_signing_certificate_to_the_register():
    register = {"4601XXXXCC": {"nodes": frozenset(), "certs": frozenset({DEMO_FINGERPRINT})},
                "4601XXXXDD": {"nodes": frozenset(), "certs": frozenset()}}
    meta = {"fmt": "xml", "cop": "4601XXXXCC", "dxp": "DXP4601XXXXCC", "sig": DEMO_FINGERPRINT}
    assert features.sender_unverified({"621": meta}, register) == []
    other = {**meta, "sig": "0" * 64}
    assert features.sender_unverified({"621": other}, register) == [
        "621: signed by certificate 0000000000000000…, not one registered to copCode 4601XXXXCC"]
    assert features.sender_unverified({"621": {**other, "cop": "4601XXXXDD"}}, register) == []  # none registered
    assert features.sender_unverified({"621": {k: v for k, v in other.items() if k != "sig"}}, register) == []


def test_the_register_loads_fingerprints_and_refuses_malformed_ones():
    rules = ruleset.load(ruleset.DEFAULT_RULESET)
    assert rules.reference.enterprises["4601XXXXCC"]["certs"] == frozenset({DEMO_FINGERPRINT})
    assert rules.reference.enterprises["4601XXXXAA"]["certs"] == frozenset()
    doc = ruleset.load_file(ruleset.DEFAULT_RULESET)
    row = doc["reference"]["enterprises"]["rows"][0]
    row["certs"] = "A6:E3" + DEMO_FINGERPRINT[4:].upper() + " ; "  # colons and case as tools print them
    assert ruleset.compile_ruleset(doc).reference.enterprises[row["code"]]["certs"] == {DEMO_FINGERPRINT}
    row["certs"] = "abc"
    with pytest.raises(ruleset.RuleSetError, match="certs"):
        ruleset.compile_ruleset(doc)


def test_the_signature_command_prints_fingerprints_and_checks_messages(tmp_path, capsys, monkeypatch):
    from streams import cli

    monkeypatch.delenv("CLEARANCE_RULES", raising=False)
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(DEMO_CERT) + b"-----END CERTIFICATE-----\n"
    for name, data in (("demo.pem", pem), ("demo.der", DEMO_CERT)):
        (tmp_path / name).write_bytes(data)
        cli.main(["signature", str(tmp_path / name)])
        assert capsys.readouterr().out.startswith(DEMO_FINGERPRINT + "  SM2 key, valid 2026-11-28 to 2046-11-23")
    (tmp_path / "621.xml").write_bytes(signed_621())
    cli.main(["signature", str(tmp_path / "621.xml")])
    assert f"certificate {DEMO_FINGERPRINT}; copCode 4601XXXXCC: registered to it" in capsys.readouterr().out
    cli.main(["signature", str(FIXTURES / "xmlsig" / "signxml-rsa-sha256-621.xml")])
    assert "NOT one registered to it (R13)" in capsys.readouterr().out
    (tmp_path / "bad.xml").write_bytes(signed_621().replace(b"<ceb:qty>", b"<ceb:qty>1", 1))
    with pytest.raises(SystemExit, match="-1004 digest_mismatch"):
        cli.main(["signature", str(tmp_path / "bad.xml")])


def test_a_message_sent_in_canonical_form_is_digested_as_sent_and_anything_else_is_canonicalised():
    data = signed_621()
    root = etree.fromstring(data)
    sig = root.find(DS + "Signature")
    assert xmlsig._as_sent(data, sig, xmlsig._prolog_end(data)) == xmlsig.signed_content(root, sig)  # the simulator writes C14N
    assert xmlsig._as_sent(etree.tostring(root), sig, 0) != xmlsig.signed_content(root, sig)  # self-closing tags
    # A space before the root tag's ">" is well-formed and not canonical: cut
    # from the bytes, the message's digest differs, and it verifies canonicalised.
    spaced = data.replace(b'version="1.0">', b'version="1.0" >', 1)
    assert spaced != data and xmlsig._as_sent(spaced, sig, xmlsig._prolog_end(spaced)) != xmlsig.signed_content(root, sig)
    assert ceb.decode(spaced).signer == DEMO_FINGERPRINT
    # A second element spelt like the signature: cut from the bytes is not for certain.
    at = data.index(b"<ds:Signature")
    extra = data[:at] + b"<ceb:ExtendMessage><ds:Signature xmlns:ds=\"urn:x\"></ds:Signature></ceb:ExtendMessage>"
    assert xmlsig._as_sent(extra + data[at:], sig, xmlsig._prolog_end(data)) is None


def test_markup_hidden_in_a_comment_cannot_move_what_the_digest_covers():
    # A subscription inserted before the signature, behind a comment that
    # spells the signature's start tag: cut naively from the first
    # "<ds:Signature", the bytes hashed would be the signed ones while the
    # message read would copy every receipt to the intruder's node.
    data = signed_621()
    sub = (b"<ceb:BaseSubscribe><ceb:status>RET</ceb:status><ceb:dxpMode>DXP</ceb:dxpMode>"
           b"<ceb:dxpAddress>DXPINTRUDER00001</ceb:dxpAddress></ceb:BaseSubscribe>")
    at = data.index(b"<ds:Signature")
    forged = data[:at] + b"<!--<ds:Signature>-->" + sub + data[at:]
    root = etree.fromstring(forged, ceb._SECURE_PARSER)
    assert ceb.import_schema().validate(root)  # it reaches the signature check
    assert xmlsig._as_sent(forged, root.find(DS + "Signature"), xmlsig._prolog_end(forged)) is None
    err = refused(forged)
    assert (err.status, err.reason) == ("-1004", "digest_mismatch")


def test_a_processing_instruction_before_the_root_is_not_taken_for_the_declaration():
    unsigned = to_xml("621", [ORDERS[0].docs["621"]], signed=False)
    body = unsigned[unsigned.index(b"?>") + 2:].lstrip()
    root = etree.fromstring(b"<?xml-stylesheet href=\"a.xsl\"?>\n" + body)
    xmlsig.sign_sm2(root, simulator._SIGNER_KEY, DEMO_CERT)
    # Signed with the stylesheet PI in the document: C14N keeps a PI outside the root.
    data = etree.tostring(root.getroottree())
    assert data.startswith(b"<?xml-stylesheet") and not xmlsig.has_declaration(data)
    assert ceb.decode(data).signer == DEMO_FINGERPRINT
    assert refused(data.replace(b"a.xsl", b"b.xsl")).reason == "digest_mismatch"
    # signxml digests the root element alone: accepted too; the PIs around the
    # root are then not covered (nothing here reads them), those inside are.
    signxml = (FIXTURES / "xmlsig" / "signxml-rsa-sha256-621-pis.xml").read_bytes()
    assert b"<?xml-stylesheet" in signxml and b"<?audit step=1?>" in signxml
    assert len(ceb.decode(signxml).signer) == 64
    assert ceb.decode(signxml.replace(b"list.xsl", b"other.xsl")).signer
    assert refused(signxml.replace(b"step=1", b"step=2")).reason == "digest_mismatch"
    assert xmlsig.has_declaration(b'<?xml version="1.0"?><a/>') and not xmlsig.has_declaration(b"<?xmlfoo?><a/>")


@given(st.binary(max_size=64), st.integers(0, len(DEMO_CERT) - 1), st.integers(0, 64))
@settings(max_examples=300, deadline=None)
def test_a_damaged_certificate_is_refused_as_unreadable_never_with_another_error(junk, at, cut):
    # Bytes replaced, inserted or cut anywhere in the certificate's DER.
    for damaged in (DEMO_CERT[:at] + junk + DEMO_CERT[at + len(junk):], DEMO_CERT[:at] + junk + DEMO_CERT[at:],
                    DEMO_CERT[:max(at - cut, 0)], junk):
        try:
            cert = xmlsig.parse_certificate(damaged)
        except xmlsig.SignatureError as exc:
            assert (exc.status, exc.reason) == ("-1001", "certificate_invalid")
        else:  # a change the parser does not read (a name, an extension) or none at all
            assert cert.algorithm in ("sm2", "rsa")


@given(st.binary(max_size=80))
@settings(max_examples=300, deadline=None)
def test_any_signature_value_is_refused_with_a_receipt(value):
    root = etree.fromstring(signed_621())
    root.find(f".//{DS}SignatureValue").text = base64.b64encode(value).decode()
    err = refused(etree.tostring(root))
    assert err.status in ("-1001", "-1004") and err.reason in ("signature_invalid", "signature_mismatch")
