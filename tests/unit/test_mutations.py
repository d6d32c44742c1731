"""Property: valid messages, slightly damaged, are decoded or refused with a
receipt, never with another error; and a signed message that still verifies
carries exactly what was signed.

Random bytes mostly stop at the parser (tests/integration/test_fuzz.py); a
valid message with a few bytes changed, or a piece of XML or JSON syntax put
in anywhere, reaches the schema, the signature and the field checks. A longer run
(`MUTATION_EXAMPLES=20000 pytest tests/unit/test_mutations.py`) found two
internal errors, each now tested on its own: an encoding name with a NUL in
the XML declaration (test_hostile_corpus.py), and a namespace with a
relative URI, which C14N refuses (test_xmlsig.py).
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.simulator import cancel_document, refund_document, to_dxp, to_json, to_xml
from tests.helpers import order
from topics import ceb

EXAMPLES = int(os.environ.get("MUTATION_EXAMPLES", "600"))
BASE = order(1)
SIGNED_621 = to_xml("621", [BASE.docs["621"]], signed=True)
INVT_NO = "640120260000000001"
SEEDS = [to_xml("311", [BASE.docs["311"]]), SIGNED_621, to_dxp("411", [BASE.docs["411"]]),
         to_xml("511", [BASE.docs["511"]]), to_json("311", [BASE.docs["311"]]), to_json("621", [BASE.docs["621"]]),
         to_dxp("621", [BASE.docs["621"]]), to_xml("623", [cancel_document(BASE, INVT_NO)]),
         to_xml("625", [refund_document(BASE, INVT_NO)]), to_json("623", [cancel_document(BASE, INVT_NO)])]
# Syntax that changes how the bytes around it are read.
PIECES = [b"<!-- x -->", b"<?pi x?>", b"<![CDATA[a]]>", b"&amp;", b"&#x41;", b"&#0;", b"&#xD800;", b"\r\n", b" ",
          b"\t", b"\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"\xe2\x80\xae", b'xmlns:a="b" ',
          b'xmlns="http://www.chinaport.gov.cn/ceb" ', b'xsi:nil="true" ', b'encoding="gb18030"',
          b'encoding="utf-16"', b"<ds:Signature>", b"</ds:Signature>", b"<ceb:note>n</ceb:note>", b"]]>", b"<",
          b">", b'"', b"'", b"\\u0000", b"\\ud800", b'"x":1,', b"1e400", b"-0", b"NaN"]


def damage(draw, seed: bytes, changes: tuple[int, int] = (1, 3)) -> bytes:
    """`seed` with a few changes, each a piece of syntax put in or up to four
    bytes replaced. `draw` is a composite's or `st.data()`'s; positions are
    drawn apart from the seed's length, which varies from order to order (a
    strategy must draw the same way each time it replays an example)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(*changes))):
        at = draw(st.integers(0, 10**6)) % (len(data) + 1)
        if draw(st.booleans()):
            data[at:at] = draw(st.sampled_from(PIECES))
        else:
            data[at:at + draw(st.integers(0, 4))] = draw(st.binary(max_size=4))
    return bytes(data)


@st.composite
def damaged(draw, seeds=tuple(SEEDS)):
    return damage(draw, draw(st.sampled_from(seeds)))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged())
def test_a_damaged_message_is_decoded_or_refused_with_a_receipt(data):
    try:
        ceb.decode(data)
    except ceb.CebError as exc:
        assert exc.status.startswith("-") and exc.info


def _content(msg: ceb.DecodedMessage) -> list:
    return [(d.head, d.lines) for d in msg.documents] + [(msg.guid, msg.cop_code, msg.dxp_id, msg.subscribers)]


SIGNED = _content(ceb.decode(SIGNED_621))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged(seeds=(SIGNED_621,)))
def test_a_damaged_signed_message_that_verifies_says_what_was_signed(data):
    # What verification lets through is what canonicalisation ignores (a
    # comment, spacing inside a tag): the documents and the sender are the
    # signed ones. A changed certificate that keeps the key verifies as another
    # signer, whose fingerprint the register does not list (R13).
    try:
        msg = ceb.decode(data)
    except ceb.CebError:
        return
    assert _content(msg) == SIGNED
