"""CEB message codec: official XML (validated against the GACC 202205 XSD) and
the same documents as JSON with the XSD's field names.

Both forms decode to the same `RawDocument`s: field name -> text, exactly as the
standard spells them. Field rules for JSON (required, type, length, digits) are
read from the XSD itself, so the two forms cannot drift apart.

The XML parser never resolves entities, never loads a DTD and never touches the
network: a DOCTYPE is refused before parsing.
"""
from __future__ import annotations

import base64
import binascii
import codecs
import json
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import msgspec
import orjson
from lxml import etree

from config.settings import DEFAULT_DXP_ID
from topics import xmlsig

NS = "http://www.chinaport.gov.cn/ceb"
XS = "{http://www.w3.org/2001/XMLSchema}"
XSD_DIR = Path(__file__).parent / "xsd"
IMPORT_XSD = XSD_DIR / "ceb-import-202205.xsd"
# The envelope a terminal node of the customs data exchange (DXP) wraps a CEB
# message in: TransInfo names the message and its sender, Data holds the CEB
# XML in Base64 (DOMAIN.md §1.1, "Three node levels").
DXP_NS = "http://www.chinaport.gov.cn/dxp"
DXP_XSD = XSD_DIR / "dxp-terminal-202205.xsd"
DXP_ROOT = f"{{{DXP_NS}}}DxpMsg"

MAX_DOCUMENTS = 100
MAX_LINES = 99
MAX_RECORD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class MessageKind:
    code: str
    root: str
    wrapper: str  # element holding one document ("" when the head repeats directly)
    head: str
    lines: str  # "" when the document has no list lines


KINDS: dict[str, MessageKind] = {
    "311": MessageKind("311", "CEB311Message", "Order", "OrderHead", "OrderList"),
    "411": MessageKind("411", "CEB411Message", "Payment", "PaymentHead", ""),
    "511": MessageKind("511", "CEB511Message", "Logistics", "LogisticsHead", ""),
    "621": MessageKind("621", "CEB621Message", "Inventory", "InventoryHead", "InventoryList"),
    "623": MessageKind("623", "CEB623Message", "", "InvtCancel", ""),
    "625": MessageKind("625", "CEB625Message", "InvtRefund", "InvtRefundHead", "InvtRefundList"),
}
KIND_BY_ROOT = {k.root: k for k in KINDS.values()}
KIND_BY_HEAD = {k.head: k for k in KINDS.values()}

# CEB900-style returnStatus values for messages that never reach matching.
ERR_MALFORMED = "-1"
ERR_SCHEMA = "-2"
ERR_UNKNOWN_TYPE = "-3"
ERR_OVERSIZE = "-4"
ERR_HOSTILE = "-5"
ERR_WRONG_TOPIC = "-6"


@dataclass(frozen=True)
class Envelope:
    """What a DxpMsg's TransInfo says of the message it carries."""

    cop_msg_id: str  # the sender's id of the message: a CEB900 names it as oriCopMsgId
    sender_id: str  # the sender's DXP node: receipts go back to it
    msg_type: str  # e.g. CEB311Message; may be empty


class CebError(Exception):
    """A message that cannot be accepted; carries the CEB900 status and a reason."""

    def __init__(self, status: str, reason: str, info: str, message_type: str = "Unknown"):
        super().__init__(info)
        self.status = status
        self.reason = reason
        self.info = info
        self.message_type = message_type
        self.envelope: Envelope | None = None  # the DxpMsg the refused message came in, once read


@dataclass
class RawDocument:
    kind: str
    head: dict[str, str]
    lines: list[dict[str, str]]


@dataclass
class DecodedMessage:
    kind: str
    fmt: str  # "xml", "json" or "dxp" (CEB XML in a DxpMsg envelope)
    guid: str
    sender: str  # BaseTransfer/copCode for XML, the envelope's SenderId for DXP, "" for JSON
    documents: list[RawDocument]
    envelope: Envelope | None = None
    # What an XML message's BaseTransfer says of its sender: the transmitting
    # enterprise and its data-exchange node (R13 compares them with the node
    # that sent it: processors/features.py, sender_unverified).
    cop_code: str = ""
    dxp_id: str = ""
    # Data-exchange nodes a BaseSubscribe with status RET or ALL names: they
    # get a copy of every receipt to this message's documents.
    subscribers: tuple[str, ...] = ()
    # SHA-256 of the certificate that signed an XML message whose signature
    # verified (topics/xmlsig.py), "" if unsigned or not verified; and when
    # that certificate expires (Unix time, 0 if none).
    signer: str = ""
    signer_expires: float = 0.0


@dataclass(frozen=True)
class FieldSpec:
    name: str
    required: bool
    kind: str  # "str", "dec" or "int"
    min_len: int
    max_len: int
    total_digits: int
    fraction_digits: int


# --------------------------------------------------------------------------- XSD


@lru_cache(maxsize=1)
def import_schema() -> etree.XMLSchema:
    # The XSD imports xmldsig from the same folder; a parser with no network
    # access resolves it locally.
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(IMPORT_XSD), parser))


@lru_cache(maxsize=1)
def dxp_schema() -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(DXP_XSD), parser))


@lru_cache(maxsize=1)
def field_specs() -> dict[str, tuple[FieldSpec, ...]]:
    """Entity name -> its fields, in XSD order, read from the import XSD."""
    tree = etree.parse(str(IMPORT_XSD), etree.XMLParser(resolve_entities=False, no_network=True))
    specs: dict[str, tuple[FieldSpec, ...]] = {}
    for entity in tree.getroot().findall(f"{XS}element"):
        seq = entity.find(f"{XS}complexType/{XS}sequence")
        if seq is None:
            continue
        fields = []
        for el in seq.findall(f"{XS}element"):
            name = el.get("name")
            if name is None:
                continue
            fields.append(_field_spec(el, name))
        if fields:
            specs[entity.get("name", "")] = tuple(fields)
    return specs


def _field_spec(el: Any, name: str) -> FieldSpec:
    required = el.get("minOccurs", "1") != "0"
    base = el.get("type", "")
    restr = el.find(f"{XS}simpleType/{XS}restriction")
    facets: dict[str, int] = {}
    if restr is not None:
        base = restr.get("base", base)
        for facet in restr:
            if isinstance(facet.tag, str) and facet.get("value") is not None:
                facets[facet.tag.replace(XS, "")] = int(facet.get("value"))
    kind = {"xs:decimal": "dec", "xs:int": "int"}.get(base, "str")
    length = facets.get("length")
    return FieldSpec(
        name=name,
        required=required,
        kind=kind,
        min_len=length if length is not None else facets.get("minLength", 0),
        max_len=length if length is not None else facets.get("maxLength", 1 << 30),
        total_digits=facets.get("totalDigits", 0),
        fraction_digits=facets.get("fractionDigits", 0),
    )


# --------------------------------------------------------------------------- XML

_SECURE_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
    huge_tree=False, remove_comments=True, remove_pis=True,
)
_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_ENC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._\-]*")
_XML_ENCODING = re.compile(rb"(?:\xef\xbb\xbf)?\s*<\?xml\s[^>]*?\bencoding\s*=\s*[\"']([^\"']*)")


def _as_utf8(data: bytes) -> bytes:
    """XML declared in another encoding (GBK, GB18030: legacy senders) as UTF-8,
    its declaration changed to match, so that the scan for invisible characters,
    which reads UTF-8, sees what the parser will (GB18030 can spell any of them)."""
    declared = _XML_ENCODING.match(data)
    if declared is None or declared.group(1).lower() in (b"utf-8", b"utf8"):
        return data
    name = declared.group(1)[:40].decode("ascii", "replace")
    try:
        # XML's EncName is [A-Za-z][A-Za-z0-9._-]*; anything else (a NUL, which
        # codecs.lookup raises ValueError for) is no encoding at all.
        if not _ENC_NAME.fullmatch(name):
            raise LookupError(name)
        text = data.decode(codecs.lookup(name).name)
    except LookupError:
        raise CebError(ERR_MALFORMED, "malformed_xml", f"XML declares an unknown encoding {name!r}") from None
    except UnicodeDecodeError as exc:
        raise CebError(ERR_MALFORMED, "malformed_xml", f"XML is not well-formed: not {name} ({exc})") from None
    out = text.encode("utf-8")
    declared = _XML_ENCODING.match(out)
    return out if declared is None else out[:declared.start(1)] + b"UTF-8" + out[declared.end(1):]


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _check_topic(kind: MessageKind, accepts: tuple[str, ...] | None) -> None:
    if accepts is not None and kind.code not in accepts:
        raise CebError(ERR_WRONG_TOPIC, "wrong_topic",
                       f"CEB{kind.code} is not accepted on this topic (expects CEB{'/'.join(accepts)})",
                       kind.root)


def decode_xml(data: bytes, accepts: tuple[str, ...] | None = None,
               envelope: Envelope | None = None, signatures: bool = True) -> DecodedMessage:
    """A CEB XML message, or a DxpMsg envelope around one (opened and its
    message decoded in full). `envelope`: the one this message came in.
    `signatures`: verify the message's XML signature where it has one."""
    if b"<!" in data and _DOCTYPE.search(data):
        raise CebError(ERR_HOSTILE, "dtd_forbidden",
                       "DOCTYPE/ENTITY declarations are not allowed in CEB messages")
    try:
        root = etree.fromstring(data, _SECURE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise CebError(ERR_MALFORMED, "malformed_xml", f"XML is not well-formed: {exc}") from None
    if root.tag == DXP_ROOT:
        if envelope is not None:
            raise CebError(ERR_SCHEMA, "envelope_invalid", "a DxpMsg's Data holds another DxpMsg; it must hold "
                           "the CEB message itself")
        return open_envelope(root, accepts, signatures)
    if root.tag.split("}")[0].lstrip("{") != NS:
        raise CebError(ERR_UNKNOWN_TYPE, "wrong_namespace",
                       f"root element {root.tag!r} is not in namespace {NS}")
    kind = KIND_BY_ROOT.get(_local(root.tag))
    if kind is None:
        raise CebError(ERR_UNKNOWN_TYPE, "unknown_message_type",
                       f"unsupported message type {_local(root.tag)!r}")
    _check_topic(kind, accepts)
    wrappers = root.findall(f"{{{NS}}}{kind.wrapper or kind.head}")
    schema = import_schema()
    if not schema.validate(root):
        # The XSD bounds documents (100) and lines (99) too; an oversize message
        # gets its own reason, so the sizes are counted when validation fails.
        _check_size(kind, len(wrappers),
                    [len(w.findall(f"{{{NS}}}{kind.lines}")) for w in wrappers] if kind.lines else [])
        err = schema.error_log.last_error
        raise CebError(ERR_SCHEMA, "schema_invalid",
                       f"schema validation failed at line {err.line}: {err.message}", kind.root)
    transfer = root.find(f"{{{NS}}}BaseTransfer")  # required by the XSD
    cop, dxp = transfer.findtext(f"{{{NS}}}copCode") or "", transfer.findtext(f"{{{NS}}}dxpId") or ""
    signer = _verify_signature(data, root, kind) if signatures else None
    return DecodedMessage(kind.code, "xml", root.get("guid", ""), cop, xml_documents(wrappers, kind), None, cop, dxp,
                          _subscribers(root), signer.fingerprint if signer else "",
                          signer.not_after if signer else 0.0)


def _verify_signature(data: bytes, root: Any, kind: MessageKind) -> xmlsig.Signer | None:
    """Who signed a schema-valid message, None if it carries no signature
    (the XSD requires one on 621/623/625). A signature that does not verify
    refuses the message: it is not what its sender signed, or not signed by
    the certificate it names."""
    try:
        return xmlsig.verify(root, time.time(), data)
    except xmlsig.SignatureError as exc:
        raise CebError(exc.status, exc.reason, exc.info, kind.root) from None


def _subscribers(root: Any) -> tuple[str, ...]:
    """The nodes subscribed to the message's receipts: BaseSubscribe (at most 5)
    with status RET (receipts) or ALL (data and receipts) on the data exchange.
    A DATA subscription asks for the message itself, which the e-port's data
    centre forwards, not customs. An address that cannot be a node id (over 16
    characters, spaces) is left out: a receipt could not be addressed to it."""
    out: list[str] = []
    for sub in root.iterchildren(f"{{{NS}}}BaseSubscribe"):
        status = (sub.findtext(f"{{{NS}}}status") or "").strip().upper()
        address = (sub.findtext(f"{{{NS}}}dxpAddress") or "").strip()
        if status in ("RET", "ALL") and 0 < len(address) <= 16 and " " not in address and address not in out:
            out.append(address)
    return tuple(out)


def looks_enveloped(record: bytes) -> bool:
    """Whether a record that could not be decoded seems to be a DxpMsg: its
    error receipt then goes back in one, and tools open it to show it."""
    return b"DxpMsg" in record[:256]


def open_envelope(root: Any, accepts: tuple[str, ...] | None = None, signatures: bool = True) -> DecodedMessage:
    """The CEB message in a parsed DxpMsg: the envelope is validated against
    its XSD, Data decoded from Base64 and the message in it decoded like any
    record (every check, its own size limit). A refusal from here on carries
    the envelope, so that its CEB900 goes back to the sender's node and names
    its CopMsgId."""
    # The schema sees Data empty: libxml2 checks Base64 a character at a time
    # (~0.6 ms for a 100-document message), the strict decoder below in C.
    # Child elements, which Data may not have, stay for the schema to refuse.
    data_el = root.find(f"{{{DXP_NS}}}Data")
    data = "" if data_el is None else data_el.text or ""
    if data_el is not None:
        data_el.text = None
    schema = dxp_schema()
    if not schema.validate(root):
        err = schema.error_log.last_error
        raise CebError(ERR_SCHEMA, "envelope_invalid",
                       f"DxpMsg envelope fails its schema at line {err.line}: {err.message}")
    info = root.find(f"{{{DXP_NS}}}TransInfo")
    env = Envelope(*(info.findtext(f"{{{DXP_NS}}}{name}") or "" for name in ("CopMsgId", "SenderId", "MsgType")))
    found = _invisible_in_text(env.__dict__.values())  # from a character reference (receipts are keyed by SenderId)
    if found is not None:
        raise _invisible_error(found)
    try:
        # xs:base64Binary allows whitespace (senders wrap lines at 76); nothing else.
        b64 = data.encode("ascii")
        if b"\n" in b64 or b" " in b64 or b"\r" in b64 or b"\t" in b64:
            b64 = b64.translate(None, b" \t\r\n")
        inner = binascii.a2b_base64(b64, strict_mode=True)
        if not inner.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
            raise CebError(ERR_SCHEMA, "envelope_invalid", "a DxpMsg's Data must hold a CEB XML message")
        msg = decode(inner, accepts, env, signatures)
        if env.msg_type and env.msg_type != KINDS[msg.kind].root:
            raise CebError(ERR_SCHEMA, "envelope_mismatch", f"the envelope's MsgType {env.msg_type!r} is not "
                           f"the message it carries ({KINDS[msg.kind].root})", KINDS[msg.kind].root)
    except (binascii.Error, UnicodeEncodeError) as exc:
        err = CebError(ERR_SCHEMA, "envelope_invalid", f"a DxpMsg's Data is not Base64 ({exc})")
        err.envelope = env
        raise err from None
    except CebError as exc:
        exc.envelope = env
        if exc.message_type == "Unknown" and env.msg_type in KIND_BY_ROOT:
            exc.message_type = env.msg_type
        raise
    return msg


def xml_documents(wrappers: list[Any], kind: MessageKind) -> list[RawDocument]:
    """The documents of a validated message: field name -> text, decimals canonical."""
    # After validation the shape is known: the head first, then the lines.
    cut = len(NS) + 2
    head_dec, line_dec = decimal_names(kind.head), decimal_names(kind.lines)
    head_int, line_int = int_names(kind.head), int_names(kind.lines)
    docs = []
    for w in wrappers:
        # A cancel (623) repeats its InvtCancel directly under the root.
        children = list(w) if kind.wrapper else [w]
        head = _canonical({c.tag[cut:]: c.text or "" for c in children[0]}, head_dec, head_int)
        lines = [_canonical({c.tag[cut:]: c.text or "" for c in line}, line_dec, line_int) for line in children[1:]]
        docs.append(RawDocument(kind.code, head, lines))
    return docs


def _check_size(kind: MessageKind, n_docs: int, line_counts: list[int]) -> None:
    if n_docs > MAX_DOCUMENTS:
        raise CebError(ERR_OVERSIZE, "too_many_documents",
                       f"{n_docs} documents in one message; at most {MAX_DOCUMENTS} allowed", kind.root)
    for i, n in enumerate(line_counts):
        if n > MAX_LINES:
            raise CebError(ERR_OVERSIZE, "too_many_lines",
                           f"document {i + 1} has {n} {kind.lines} lines; at most {MAX_LINES} allowed",
                           kind.root)


# --------------------------------------------------------------------------- JSON
#
# JSON documents are validated by msgspec against types generated from the XSD
# (required fields, string lengths, decimal and integer forms, list sizes,
# no unknown fields), in C; only decimals given as JSON numbers take a Python
# path. A record is one document object or a list of up to 100.

_DECIMAL_TEXT = r"[+-]?(\d+\.?\d*|\.\d+)"
_INT_TEXT = r"[+-]?\d{1,10}"
_NUMBER_TEXT = {"dec": (re.compile(_DECIMAL_TEXT), "a decimal number as text"),
                "int": (re.compile(_INT_TEXT), "an integer as text")}


class _NotNumberText(Exception):
    """A number sent as text that is not one; decode_json adds where it was."""

    def __init__(self, field: str, expected: str):
        super().__init__(field)
        self.field, self.expected = field, expected


def _json_type(spec: FieldSpec) -> Any:
    if spec.kind == "str":
        t: Any = Annotated[str, msgspec.Meta(min_length=spec.min_len, max_length=spec.max_len)]
    elif spec.kind == "int":
        t = Union[Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)],
                  Annotated[str, msgspec.Meta(max_length=11)]]
    else:
        t = Union[int, float, Annotated[str, msgspec.Meta(max_length=64)]]
    # The text forms of numbers are checked against _INT_TEXT / _DECIMAL_TEXT in
    # _entity_dict, once per spelling (a msgspec pattern would call Python's re
    # for every field of every document: about a third of the decode).
    return t if spec.required else Optional[t]


def _entity_struct(entity: str) -> Any:
    fields = [(f.name, _json_type(f)) if f.required else (f.name, _json_type(f), None)
              for f in field_specs()[entity]]
    # msgspec wants required fields first; order does not matter in JSON.
    fields.sort(key=len)
    # omit_defaults: absent optional fields (None) are left out by to_builtins, in C.
    return msgspec.defstruct(entity, fields, forbid_unknown_fields=True, omit_defaults=True)


@lru_cache(maxsize=None)
def _json_decoder(code: str) -> Any:
    kind = KINDS[code]
    fields: list[Any] = [(kind.head, _entity_struct(kind.head))]
    if kind.lines:
        fields.append((kind.lines, Annotated[list[_entity_struct(kind.lines)],  # type: ignore[misc]
                                             msgspec.Meta(min_length=1, max_length=MAX_LINES)]))
    doc = msgspec.defstruct(kind.code + "Document", fields, forbid_unknown_fields=True)
    record = Union[doc, Annotated[list[doc], msgspec.Meta(min_length=1, max_length=MAX_DOCUMENTS)]]
    return msgspec.json.Decoder(record)


# The first document's head names the record's type. Another type's head later
# in the record is an unknown field to that type's decoder, reported as a mixed
# record (decode_json): searching the whole record for every type's head was
# five full scans of it.
_HEAD_NAME = re.compile(rb'"(' + b"|".join(re.escape(k.head.encode()) for k in KINDS.values()) + rb')"')


def _sniff_json_kind(data: bytes) -> MessageKind:
    first = _HEAD_NAME.search(data)
    if first is None:
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise CebError(ERR_MALFORMED, "malformed_json", f"JSON is not well-formed: {exc}") from None
        raise CebError(ERR_UNKNOWN_TYPE, "unknown_message_type",
                       "each document needs exactly one of " + ", ".join(sorted(KIND_BY_HEAD)))
    return KIND_BY_HEAD[first.group(1).decode()]


def decode_json(data: bytes, accepts: tuple[str, ...] | None = None) -> DecodedMessage:
    kind = _sniff_json_kind(data)
    _check_topic(kind, accepts)
    try:
        obj = _json_decoder(kind.code).decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if any(f"unknown field `{other}`" in text for other in KIND_BY_HEAD if other != kind.head):
            raise CebError(ERR_SCHEMA, "schema_invalid", "one record carries one document type only") from None
        if f"length <= {MAX_DOCUMENTS}" in text and "OrderList" not in text and "InventoryList" not in text:
            raise CebError(ERR_OVERSIZE, "too_many_documents",
                           f"more than {MAX_DOCUMENTS} documents in one record ({text})", kind.root) from None
        if f"length <= {MAX_LINES}" in text and text.rstrip("`").endswith(kind.lines):
            raise CebError(ERR_OVERSIZE, "too_many_lines",
                           f"more than {MAX_LINES} {kind.lines} lines in one document ({text})", kind.root) from None
        raise CebError(ERR_SCHEMA, "schema_invalid", f"JSON does not match CEB{kind.code}: {text}",
                       kind.root) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise CebError(ERR_MALFORMED, "malformed_json", f"JSON is not well-formed (UTF-8 required): {exc}") from None
    items = obj if isinstance(obj, list) else [obj]
    numeric = _numeric_specs()
    docs = []
    i = j = 0
    where = kind.head
    try:
        for i, item in enumerate(items):
            where = kind.head
            head = _entity_dict(getattr(item, kind.head), numeric[kind.head], kind)
            lines = []
            if kind.lines:
                where = kind.lines
                for j, line in enumerate(getattr(item, kind.lines)):
                    lines.append(_entity_dict(line, numeric[kind.lines], kind))
            docs.append(RawDocument(kind.code, head, lines))
    except _NotNumberText as exc:
        path = ("$" if items is not obj else f"$[{i}]") + f".{where}" + (f"[{j}]" if where == kind.lines else "")
        raise CebError(ERR_SCHEMA, "schema_invalid", f"JSON does not match CEB{kind.code}: Expected "
                       f"{exc.expected} - at `{path}.{exc.field}`", kind.root) from None
    if not _members_all_decoded(data, docs, kind):
        repeated = _repeated_key(data)
        if repeated is not None:
            raise CebError(ERR_SCHEMA, "duplicate_key", f"JSON object repeats the member {repeated[:40]!r}; "
                           "which one counts would depend on the reader", kind.root)
    return DecodedMessage(kind.code, "json", "", "", docs)


# A JSON object that repeats a member decodes to its last value here and to
# the first in other readers (a signature checker, a gateway): refused. msgspec
# keeps the last silently, so the members are counted instead. Every member
# has one colon outside strings; a repeated one, or an explicit null (which
# msgspec drops), is a member more than were decoded. So when the record's
# colons equal the members decoded, nothing repeats. When they are more,
# colons inside the decoded values (an escaped one, \u003a, counted back:
# it is in a value but not in the record) are taken off and the counts
# compared again; a repeated member still leaves one more, since the value it
# replaced is gone from the decoded side. Only a record that still differs
# (a repeat, an explicit null) is read again by a reader that sees every
# member (~10 µs per document). The common record costs one count of its bytes.

def _members_all_decoded(data: bytes, docs: list[RawDocument], kind: MessageKind) -> bool:
    members = len(docs) * (2 if kind.lines else 1)  # the head's and the lines' names
    for doc in docs:
        members += len(doc.head)
        for line in doc.lines:
            members += len(line)
    colons = data.count(b":")
    if colons == members:
        return True
    if b"\\u" in data:
        colons += data.count(b"\\u003a") + data.count(b"\\u003A")
    for doc in docs:
        colons -= "".join(doc.head.values()).count(":")
        for line in doc.lines:
            colons -= "".join(line.values()).count(":")
    return colons == members


class _Repeated(Exception):
    pass


def _no_repeats(pairs: list[tuple[str, Any]]) -> None:
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            raise _Repeated(name)
        seen.add(name)


def _repeated_key(data: bytes) -> str | None:
    try:
        json.loads(data, object_pairs_hook=_no_repeats)
    except _Repeated as exc:
        return str(exc.args[0])
    except ValueError:  # msgspec read it; nothing more to learn from another reader's complaint
        return None
    return None


def _entity_dict(struct: Any, numeric: tuple[tuple[FieldSpec, dict[str, str]], ...],
                 kind: MessageKind) -> dict[str, str]:
    out = msgspec.to_builtins(struct)
    # Only numbers need a second look: their text form must be canonical. The
    # same amounts and quantities recur (prices, "1", "0"): each spelling is
    # checked once per field and remembered.
    for spec, seen in numeric:
        value = out.get(spec.name)
        if value is None:
            continue
        text = seen.get(value) if value.__class__ is str else None
        if text is None:
            if value.__class__ is str:
                pattern, expected = _NUMBER_TEXT[spec.kind]
                if not pattern.fullmatch(value):
                    raise _NotNumberText(spec.name, expected)
            text = str(int(value)) if spec.kind == "int" else _decimal_text(value, spec, kind)
            if spec.kind == "dec" and text[0] == "-":
                raise _negative(spec.name, text)
            if value.__class__ is str:
                _remember(seen, value, text)
        out[spec.name] = text
    return out



@lru_cache(maxsize=1)
def _numeric_specs() -> dict[str, tuple[tuple[FieldSpec, dict[str, str]], ...]]:
    # Each numeric field with its memo {spelling as sent: canonical text}; only
    # valid, non-negative spellings are remembered.
    return {entity: tuple((s, {}) for s in specs if s.kind != "str") for entity, specs in field_specs().items()}


def _decimal_text(value: Any, spec: FieldSpec, kind: MessageKind) -> str:
    if isinstance(value, bool):
        raise CebError(ERR_SCHEMA, "schema_invalid", f"{spec.name}: expected a number, got a boolean", kind.root)
    text = canonical_decimal(value if isinstance(value, str) else repr(value))
    int_part, dot, frac = text.partition(".")
    if len(int_part) + len(frac) <= spec.total_digits and len(frac) <= spec.fraction_digits and \
            (int_part.isdigit() or text == "0") and (not dot or frac.isdigit()):
        return text  # the common case, without the regex
    int_part = int_part.lstrip("-")
    if not _DECIMAL_RE.match(text) or len(frac) > spec.fraction_digits or \
            len(int_part.lstrip("0")) + len(frac) > spec.total_digits:
        raise CebError(ERR_SCHEMA, "schema_invalid",
                       f"{spec.name}: {str(value)[:40]!r} is not a decimal with at most {spec.total_digits} "
                       f"digits, {spec.fraction_digits} after the point", kind.root)
    return text


_DECIMAL_RE = re.compile(r"^-?\d+(\.\d+)?$")


def canonical_decimal(text: str) -> str:
    """One spelling per amount ("300.00", "+300", 300.0 all become "300"), so
    that the same document sent as XML or as JSON compares equal."""
    exponent = "e" in text or "E" in text
    if not exponent:
        # Fast path for the common spellings ("189.00", "300"): trailing zeros off.
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        if text and text[0] not in "+-0.":
            return text
    if exponent:  # a JSON number in exponent form
        try:
            text = format(Decimal(text), "f")
        except InvalidOperation:
            return text
    neg = text.startswith("-")
    body = text.lstrip("+-")
    if "." in body:
        body = body.rstrip("0").rstrip(".")
    int_part, dot, frac = body.partition(".")
    body = (int_part.lstrip("0") or "0") + (dot + frac if frac else "")
    return "-" + body if neg and body != "0" else body


@lru_cache(maxsize=None)
def decimal_names(entity: str) -> tuple[str, ...]:
    return tuple(f.name for f in field_specs().get(entity, ()) if f.kind == "dec")


@lru_cache(maxsize=None)
def int_names(entity: str) -> tuple[str, ...]:
    return tuple(f.name for f in field_specs().get(entity, ()) if f.kind == "int")


def _canonical(fields: dict[str, str], decimals: tuple[str, ...], ints: tuple[str, ...]) -> dict[str, str]:
    """XML numbers in the one spelling JSON's get. xs:decimal and xs:int collapse
    whitespace and allow a sign and leading zeros, so " 1428.120", "+1" and
    "01" are valid and must compare equal to "1428.12" and "1". The same
    spellings recur (prices, "1", "0"): each is worked out once and remembered."""
    for name in decimals:
        text = fields.get(name)
        if text:
            canonical = _XML_DECIMALS.get(text)
            if canonical is None:
                stripped = text.strip()
                if stripped[:1] == "-":
                    raise _negative(name, stripped)
                canonical = _remember(_XML_DECIMALS, text, canonical_decimal(stripped))
            fields[name] = canonical
    for name in ints:
        text = fields.get(name)
        if text:
            canonical = _XML_INTS.get(text)
            fields[name] = canonical if canonical is not None else _remember(_XML_INTS, text, str(int(text)))
    return fields


_XML_DECIMALS: dict[str, str] = {}  # spelling -> canonical text; only non-negative ones
_XML_INTS: dict[str, str] = {}


def _remember(memo: dict[str, str], spelling: str, canonical: str) -> str:
    if len(memo) > 50_000:  # bounded: unique amounts must not grow it forever
        memo.clear()
    memo[spelling] = canonical
    return canonical


# Characters never legitimate in a declaration, and the stuff of look-alike
# keys and text that reads other than it is stored (Trojan Source,
# CVE-2021-42574): Unicode's controls (Cc: NUL, the C0 and C1 sets, DEL) and
# format characters (Cf: zero-width spaces and joiners, bidi marks, embeddings,
# overrides and isolates, the BOM, the soft hyphen, tag characters, ...), and
# the line and paragraph separators (Zl, Zp). Tab, LF and CR are layout.
# Unicode 15.0's set (Python 3.11's unicodedata is 14.0, where U+13439-1343F
# are unassigned); tests/unit/test_hostile_corpus.py checks it against
# unicodedata. They are refused however they are spelt: raw UTF-8, a JSON
# \u escape or an XML character reference (which the parser would turn into
# the character itself).
FORBIDDEN_RANGES = (
    (0x0000, 0x0008), (0x000B, 0x000C), (0x000E, 0x001F), (0x007F, 0x009F), (0x00AD, 0x00AD),
    (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891),
    (0x08E2, 0x08E2), (0x180E, 0x180E), (0x200B, 0x200F), (0x2028, 0x202E), (0x2060, 0x2064),
    (0x2066, 0x206F), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD),
    (0x13430, 0x1343F), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)
FORBIDDEN_CHARS = frozenset(chr(c) for lo, hi in FORBIDDEN_RANGES for c in range(lo, hi + 1))
_RAW_CONTROLS = bytes(c for c in range(0x80) if chr(c) in FORBIDDEN_CHARS)
_FORBIDDEN_TEXT = re.compile("[" + "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in FORBIDDEN_RANGES) + "]")


def _utf8_alternatives(tails: list[bytes]) -> bytes:
    """A regex for any of `tails` (UTF-8 sequences), shared prefixes factored out."""
    if all(len(t) == 1 for t in tails):
        return b"[" + b"".join(re.escape(t) for t in sorted(tails)) + b"]"
    by_first: dict[bytes, list[bytes]] = {}
    for t in tails:
        by_first.setdefault(t[:1], []).append(t[1:])
    parts = [re.escape(first) + _utf8_alternatives(rest) for first, rest in sorted(by_first.items())]
    return parts[0] if len(parts) == 1 else b"(?:" + b"|".join(parts) + b")"


# Per first byte of the UTF-8 form of a forbidden character above U+007F, a
# regex for the forbidden characters that start with it. CJK text (E3-E9) has
# none of those bytes; full-width punctuation (EF) and quotes or dashes (E2)
# do, and then only their own regex runs. Each is a C scan with a literal
# first byte: a record made of nothing but such bytes costs tens of ms per
# MiB, not a Python loop per character.
_FAMILIES: tuple[tuple[int, Any], ...] = tuple(
    (lead, re.compile(re.escape(bytes([lead])) + _utf8_alternatives(
        [ch.encode()[1:] for ch in FORBIDDEN_CHARS if ord(ch) >= 0x80 and ch.encode()[0] == lead])))
    for lead in sorted({ch.encode()[0] for ch in FORBIDDEN_CHARS if ord(ch) >= 0x80}))
_SCANNED = _RAW_CONTROLS + bytes(lead for lead, _ in _FAMILIES)


def _invisible(data: bytes) -> int | None:
    """The first forbidden character in the raw bytes (its code point), else None."""
    # One C pass (bytes.translate) finds the bytes a forbidden character can start with.
    if len(data.translate(None, _SCANNED)) == len(data):
        return None
    for c in _RAW_CONTROLS:
        if c in data:
            return c
    for lead, family in _FAMILIES:
        if lead in data:
            found = family.search(data)
            if found is not None:
                return ord(found.group().decode())
    return None


def _invisible_in_values(msg: DecodedMessage) -> int | None:
    """A forbidden character the parser made from an escape (JSON \\u200b, \\b) or
    a character reference (XML &#x200B;), found in the decoded text."""
    parts = [msg.guid, msg.sender, msg.dxp_id, *msg.subscribers]
    for doc in msg.documents:
        parts += doc.head.values()
        for line in doc.lines:
            parts += line.values()
    return _invisible_in_text(parts)


def _invisible_in_text(parts: Any) -> int | None:
    """The first forbidden character in decoded strings (its code point), else None."""
    text = "".join(parts)
    if text.isprintable():  # in C; false as well for spaces other than " " and for tab, LF, CR
        return None
    found = _FORBIDDEN_TEXT.search(text)
    return None if found is None else ord(found.group())


DATE_FIELDS = {"appTime": 14, "payTime": 14, "declTime": 8, "ieDate": 8}  # YYYYMMDD[hhmmss]
FUTURE_TOLERANCE_S = 24 * 3600


_CST = timezone(timedelta(hours=8))


def _valid_date(text: str, length: int) -> bool:
    # The same stamps recur (a message's documents share their second): each
    # spelling is checked once and remembered; the memo is bounded.
    if len(text) != length:
        return False
    valid = _VALID_DATES.get(text)
    if valid is None:
        if len(_VALID_DATES) > 50_000:
            _VALID_DATES.clear()
        valid = _VALID_DATES[text] = _check_date(text, length)
    return valid


_VALID_DATES: dict[str, bool] = {}


def _check_date(text: str, length: int) -> bool:
    if len(text) != length or not text.isdigit():
        return False
    month, day = int(text[4:6]), int(text[6:8])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return False
    if length == 14 and not (int(text[8:10]) < 24 and int(text[10:12]) < 60 and int(text[12:14]) < 60):
        return False
    if day > 28:  # the calendar decides the last days of a month
        try:
            datetime(int(text[0:4]), month, day)
        except ValueError:
            return False
    return True


APP_TYPES = frozenset({"1", "2", "3"})  # add, change, delete (the XSD says only: one character)


# The identifiers documents are matched and stored by. Padded with spaces
# (" HN001", "HN001\u3000") one is another key that reads the same: the order
# would wait for documents that name it unpadded and time out, saying nothing
# of why. The schema's xs:string keeps the spaces, so they are refused here.
# Spelt with a compatibility letter or digit (full-width "ＨＮ００１", the
# ligature "ﬁ", circled or superscript digits, a CJK compatibility
# ideograph) one reads as its plain twin to an officer and to every tool that
# folds by NFKC, but is another key here: refused (_lookalike). Full-width
# punctuation, which Chinese input methods type as a matter of course ("（一）"),
# is left alone: it does not look like its ASCII twin. A letter or digit of
# another script (Cyrillic "Н" for Latin "H") is refused too.
# An ASCII identifier (nearly all) costs one isascii().
KEY_FIELDS = ("orderNo", "ebpCode", "ebcCode", "payCode", "payTransactionId", "logisticsCode", "logisticsNo",
              "agentCode", "copNo", "invtNo", "preNo")


@lru_cache(maxsize=None)
def _key_fields(code: str) -> tuple[str, ...]:
    """The KEY_FIELDS a message type's head has."""
    names = {f.name for f in field_specs().get(KINDS[code].head, ())}
    return tuple(name for name in KEY_FIELDS if name in names)


# Letters and digits an identifier may hold beyond ASCII: Chinese ones (the
# unified ideographs of every extension, the ideographic 〇 and iteration mark
# 々, and the Hangzhou numerals 〡-〩).
_CHINESE = ("CJK UNIFIED IDEOGRAPH-", "IDEOGRAPHIC ", "HANGZHOU NUMERAL")


def _lookalike(value: str) -> str:
    """How a non-ASCII identifier could pass for another, from its first such
    character; "" if it cannot. A compatibility letter or digit reads as the
    plain one NFKC folds it to. Other scripts' letters and digits, combining
    marks and private-use characters are not folded, but Cyrillic, Greek,
    Armenian, Cherokee and the accented or IPA Latin letters hold look-alikes
    of ASCII letters (Cyrillic "Н" and "О" in "НО01"), a combining mark
    changes a letter without a code point of its own, and a private-use
    character looks like whatever a font draws for it: an identifier's
    letters and digits are ASCII or Chinese."""
    folds = unicodedata.normalize("NFKC", value) != value
    for c in value:
        if c.isascii():
            continue
        plain = unicodedata.normalize("NFKC", c) if folds else c
        if plain != c and plain.isalnum():
            return f"spells {c!r} (U+{ord(c):04X}) for {plain!r} in compatibility characters; send the plain form"
        category = unicodedata.category(c)
        if category[0] == "M" or category == "Co" or \
                category[0] in "LN" and not unicodedata.name(c, "").startswith(_CHINESE):
            return (f"holds {c!r} (U+{ord(c):04X} {unicodedata.name(c, 'private use')}); an identifier's letters "
                    "and digits are ASCII or Chinese, so that none passes for another")
    return ""


def _check_documents(msg: DecodedMessage, now: float) -> None:
    """What the schema cannot say: dates are real and not in the future,
    appType is one of the three its documentation names, and no identifier a
    document is matched by starts or ends with a space or is spelt in
    compatibility characters."""
    # Fixed-width digit strings compare like the dates they spell.
    latest = datetime.fromtimestamp(now + FUTURE_TOLERANCE_S, _CST).strftime("%Y%m%d%H%M%S")
    latest_of = {14: latest, 8: latest[:8]}
    keys = _key_fields(msg.kind)
    for i, doc in enumerate(msg.documents, 1):
        head = doc.head
        app = head.get("appType")
        if app is not None and app not in APP_TYPES:
            raise CebError(ERR_SCHEMA, "invalid_app_type", f"document {i}: appType {app!r} is not 1 (add), "
                           "2 (change) or 3 (delete)", KINDS[msg.kind].root)
        for name in keys:
            value = head.get(name)
            if not value or value.isascii() and value.strip() == value:
                continue
            if value.strip() != value:
                raise CebError(ERR_SCHEMA, "padded_identifier", f"document {i}: {name} {value!r} starts or ends "
                               "with a space; identifiers are matched exactly", KINDS[msg.kind].root)
            how = _lookalike(value)
            if how:
                raise CebError(ERR_SCHEMA, "lookalike_identifier", f"document {i}: {name} {value!r} {how} "
                               "(identifiers are matched exactly)", KINDS[msg.kind].root)
        for name, length in DATE_FIELDS.items():
            text = doc.head.get(name)
            if not text:
                continue
            if not _valid_date(text, length):
                raise CebError(ERR_SCHEMA, "invalid_date", f"document {i}: {name} {text!r} is not a date "
                               f"({'YYYYMMDDhhmmss' if length == 14 else 'YYYYMMDD'})", KINDS[msg.kind].root)
            if text > latest_of[length]:
                raise CebError(ERR_SCHEMA, "future_date", f"document {i}: {name} {text} is in the future",
                               KINDS[msg.kind].root)


def _negative(name: str, value: str) -> CebError:
    # Amounts, quantities and weights in CEB messages are never negative.
    return CebError(ERR_SCHEMA, "negative_amount", f"{name} is negative ({value})")


def decode(data: bytes, accepts: tuple[str, ...] | None = None, envelope: Envelope | None = None,
           signatures: bool = True) -> DecodedMessage:
    """Decode one record: XML if it starts with '<' (after whitespace/BOM), else JSON.
    `signatures`: verify XML signatures (CLEARANCE_SIGNATURES); JSON has none.

    `accepts` lists the message types the record's topic takes; another type is
    refused before its fields are looked at. A DxpMsg envelope is opened and
    the CEB message in it decoded (`envelope`: the one it came in)."""
    if len(data) > MAX_RECORD_BYTES:
        raise CebError(ERR_OVERSIZE, "record_too_large",
                       f"record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise CebError(ERR_MALFORMED, "not_utf8", "records are UTF-8 (XML may declare GBK or GB18030); "
                       "this one starts with a UTF-16 byte order mark")
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # a leading BOM is allowed, in JSON too
    xml = head.startswith(b"<")
    if xml:
        body = _as_utf8(body)
    found = _invisible(body)
    if found is not None:
        raise _invisible_error(found)
    msg = decode_xml(body, accepts, envelope, signatures) if xml else decode_json(body, accepts)
    if msg.envelope is not None and envelope is None:
        return msg  # the message in the envelope was decoded, and checked, by the call that opened it
    if (b"&#" if xml else b"\\") in body:  # a character reference or an escape may have made one
        found = _invisible_in_values(msg)
        if found is not None:
            raise _invisible_error(found)
    _check_documents(msg, time.time())
    if envelope is not None:
        msg.fmt, msg.sender, msg.envelope = "dxp", envelope.sender_id, envelope
    return msg


def _invisible_error(code_point: int) -> CebError:
    return CebError(ERR_SCHEMA, "invisible_characters",
                    f"control or invisible Unicode character U+{code_point:04X} is not allowed (controls, "
                    "zero-width, bidi and other format characters, line separators)")


# --------------------------------------------------------------------------- receipts

def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def encode_receipts(receipts: list[dict[str, Any]], dxp_id: str = DEFAULT_DXP_ID) -> list[tuple[str, bytes]]:
    """Group receipts per (sender, type, form) into CEB messages of ≤100 returns.

    XML receipts follow the XSD element order; JSON receipts are a list of
    {"<Entity>": {...}} objects, the mirror of the inbound JSON form; a sender
    that wrote DxpMsg envelopes gets its XML receipts in one, from `dxp_id` to
    its node.
    """
    groups: dict[tuple[str, str, str, str], list[dict[str, str]]] = {}
    for r in receipts:
        groups.setdefault((r["to"], r["type"], r["fmt"], r["entity"]), []).append(r["body"])
        for node in r.get("cc", ()):  # subscribers (BaseSubscribe): a copy, on the data exchange
            groups.setdefault((node, r["type"], "dxp", r["entity"]), []).append(r["body"])
    out: list[tuple[str, bytes]] = []
    for (to, rtype, fmt, entity), bodies in groups.items():
        for i in range(0, len(bodies), MAX_DOCUMENTS):
            chunk = bodies[i:i + MAX_DOCUMENTS]
            if fmt == "xml":
                out.append((to, _xml_receipts(rtype, entity, chunk)))
            elif fmt == "dxp":
                out.append((to, dxp_wrap(_xml_receipts(rtype, entity, chunk), dxp_id, to, f"CEB{rtype}Message")))
            else:
                out.append((to, orjson.dumps([{entity: b} for b in chunk])))
    return out


def _xml_receipts(rtype: str, entity: str, bodies: list[dict[str, str]]) -> bytes:
    tags = _receipt_tags(entity)
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ceb:CEB{rtype}Message '
             f'guid="{str(uuid.uuid4()).upper()}" version="1.0" xmlns:ceb="{NS}">']
    for body in bodies:
        parts.append(tags[0])
        for name, start, end in tags[1]:
            value = body.get(name)
            if value is not None:
                # Most values hold nothing to escape: checked before three replaces.
                parts += (start, _esc(value) if "&" in value or "<" in value or ">" in value else value, end)
        parts.append(tags[2])
    parts.append(f"</ceb:CEB{rtype}Message>")
    return "".join(parts).encode("utf-8")


def dxp_wrap(message: bytes, sender_id: str, receiver_id: str, msg_type: str, cop_msg_id: str = "") -> bytes:
    """A CEB XML message in a DxpMsg envelope, as a terminal node sends it.
    Node ids are at most 16 characters (the XSD); a longer or empty receiver
    (a sender that could not be identified) is cut or named "unknown"."""
    stamp = datetime.now(_CST).strftime("%Y-%m-%dT%H:%M:%S")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<dxp:DxpMsg ver="1.0" xmlns:dxp="{DXP_NS}"><dxp:TransInfo>'
            f"<dxp:CopMsgId>{_esc(cop_msg_id or str(uuid.uuid4()).upper())}</dxp:CopMsgId>"
            f"<dxp:SenderId>{_esc(sender_id[:16])}</dxp:SenderId><dxp:ReceiverIds><dxp:ReceiverId>"
            f"{_esc(receiver_id[:16] or 'unknown')}</dxp:ReceiverId></dxp:ReceiverIds>"
            f"<dxp:CreatTime>{stamp}</dxp:CreatTime><dxp:MsgType>{_esc(msg_type)}</dxp:MsgType></dxp:TransInfo>"
            f"<dxp:Data>{base64.b64encode(message).decode('ascii')}</dxp:Data></dxp:DxpMsg>").encode("utf-8")


@lru_cache(maxsize=None)
def _receipt_tags(entity: str) -> tuple[str, tuple[tuple[str, str, str], ...], str]:
    """A receipt entity's opening tag, its fields' tags in XSD order, its closing tag."""
    fields = tuple((f.name, f"<ceb:{f.name}>", f"</ceb:{f.name}>") for f in field_specs()[entity])
    return f"<ceb:{entity}>", fields, f"</ceb:{entity}>"
