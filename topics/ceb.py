"""CEB message codec: official XML (validated against the GACC 202205 XSD) and
the same documents as JSON with the XSD's field names.

Both forms decode to the same `RawDocument`s: field name -> text, exactly as the
standard spells them. Field rules for JSON (required, type, length, digits) are
read from the XSD itself, so the two forms cannot drift apart.

The XML parser never resolves entities, never loads a DTD and never touches the
network: a DOCTYPE is refused before parsing.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from lxml import etree

NS = "http://www.chinaport.gov.cn/ceb"
XS = "{http://www.w3.org/2001/XMLSchema}"
XSD_DIR = Path(__file__).parent / "xsd"
IMPORT_XSD = XSD_DIR / "ceb-import-202205.xsd"

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


class CebError(Exception):
    """A message that cannot be accepted; carries the CEB900 status and a reason."""

    def __init__(self, status: str, reason: str, info: str, message_type: str = "Unknown"):
        super().__init__(info)
        self.status = status
        self.reason = reason
        self.info = info
        self.message_type = message_type


@dataclass
class RawDocument:
    kind: str
    head: dict[str, str]
    lines: list[dict[str, str]]


@dataclass
class DecodedMessage:
    kind: str
    fmt: str  # "xml" or "json"
    guid: str
    sender: str  # BaseTransfer/copCode for XML, "" for JSON
    documents: list[RawDocument]


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


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _check_topic(kind: MessageKind, accepts: tuple[str, ...] | None) -> None:
    if accepts is not None and kind.code not in accepts:
        raise CebError(ERR_WRONG_TOPIC, "wrong_topic",
                       f"CEB{kind.code} is not accepted on this topic (expects CEB{'/'.join(accepts)})",
                       kind.root)


def decode_xml(data: bytes, accepts: tuple[str, ...] | None = None) -> DecodedMessage:
    if _DOCTYPE.search(data[:65536]) or b"<!ENTITY" in data or b"<!DOCTYPE" in data:
        raise CebError(ERR_HOSTILE, "dtd_forbidden",
                       "DOCTYPE/ENTITY declarations are not allowed in CEB messages")
    try:
        root = etree.fromstring(data, _SECURE_PARSER)
    except etree.XMLSyntaxError as exc:
        raise CebError(ERR_MALFORMED, "malformed_xml", f"XML is not well-formed: {exc}") from None
    if root.tag.split("}")[0].lstrip("{") != NS:
        raise CebError(ERR_UNKNOWN_TYPE, "wrong_namespace",
                       f"root element {root.tag!r} is not in namespace {NS}")
    kind = KIND_BY_ROOT.get(_local(root.tag))
    if kind is None:
        raise CebError(ERR_UNKNOWN_TYPE, "unknown_message_type",
                       f"unsupported message type {_local(root.tag)!r}")
    _check_topic(kind, accepts)
    wrappers = root.findall(f"{{{NS}}}{kind.wrapper}")
    _check_size(kind, len(wrappers),
                [len(w.findall(f"{{{NS}}}{kind.lines}")) for w in wrappers] if kind.lines else [])
    schema = import_schema()
    if not schema.validate(root):
        err = schema.error_log.last_error
        raise CebError(ERR_SCHEMA, "schema_invalid",
                       f"schema validation failed at line {err.line}: {err.message}", kind.root)
    decimals = decimal_fields()
    docs = []
    for w in wrappers:
        head_el = w.find(f"{{{NS}}}{kind.head}")
        head = _canonical({_local(c.tag): (c.text or "") for c in head_el}, decimals[kind.head])
        lines = [_canonical({_local(c.tag): (c.text or "") for c in line}, decimals[kind.lines])
                 for line in w.findall(f"{{{NS}}}{kind.lines}")] if kind.lines else []
        docs.append(RawDocument(kind.code, head, lines))
    cop = root.find(f"{{{NS}}}BaseTransfer/{{{NS}}}copCode")
    return DecodedMessage(kind.code, "xml", root.get("guid", ""), (cop.text or "") if cop is not None else "", docs)


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

_DECIMAL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_INT = re.compile(r"^[+-]?\d+$")


def decode_json(data: bytes, accepts: tuple[str, ...] | None = None) -> DecodedMessage:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CebError(ERR_MALFORMED, "malformed_json", f"JSON is not well-formed: {exc}") from None
    items = obj if isinstance(obj, list) else [obj]
    if not items or not all(isinstance(i, dict) for i in items):
        raise CebError(ERR_SCHEMA, "schema_invalid",
                       "a JSON record is one document object or a non-empty list of them")
    kinds = set()
    for item in items:
        heads = [k for k in item if k in KIND_BY_HEAD]
        if len(heads) != 1:
            raise CebError(ERR_UNKNOWN_TYPE, "unknown_message_type",
                           "each document needs exactly one of " + ", ".join(sorted(KIND_BY_HEAD)))
        kinds.add(heads[0])
    if len(kinds) != 1:
        raise CebError(ERR_SCHEMA, "schema_invalid", "one record carries one document type only")
    kind = KIND_BY_HEAD[kinds.pop()]
    _check_topic(kind, accepts)
    _check_size(kind, len(items),
                [len(i.get(kind.lines) or []) if isinstance(i.get(kind.lines), list) else 0
                 for i in items] if kind.lines else [])
    specs = field_specs()
    docs = []
    for n, item in enumerate(items, 1):
        where = f"document {n}"
        extra = set(item) - {kind.head, kind.lines}
        if extra:
            raise CebError(ERR_SCHEMA, "schema_invalid",
                           f"{where}: unexpected element(s) {sorted(extra)}", kind.root)
        head = _validate_entity(item[kind.head], specs[kind.head], f"{where} {kind.head}", kind)
        lines: list[dict[str, str]] = []
        if kind.lines:
            raw_lines = item.get(kind.lines)
            if not isinstance(raw_lines, list) or not raw_lines:
                raise CebError(ERR_SCHEMA, "schema_invalid",
                               f"{where}: {kind.lines} must be a list of 1..{MAX_LINES} lines", kind.root)
            lines = [_validate_entity(line, specs[kind.lines], f"{where} {kind.lines}[{i}]", kind)
                     for i, line in enumerate(raw_lines, 1)]
        docs.append(RawDocument(kind.code, head, lines))
    return DecodedMessage(kind.code, "json", "", "", docs)


def _validate_entity(obj: Any, specs: tuple[FieldSpec, ...], where: str, kind: MessageKind) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise CebError(ERR_SCHEMA, "schema_invalid", f"{where} must be an object", kind.root)
    known = {s.name for s in specs}
    unknown = [k for k in obj if k not in known]
    if unknown:
        raise CebError(ERR_SCHEMA, "schema_invalid", f"{where}: unknown field(s) {unknown}", kind.root)
    out: dict[str, str] = {}
    for spec in specs:
        value = obj.get(spec.name)
        if value is None:
            if spec.required:
                raise CebError(ERR_SCHEMA, "schema_invalid",
                               f"{where}: required field {spec.name!r} is missing", kind.root)
            continue
        out[spec.name] = _check_value(value, spec, where, kind)
    return out


def _check_value(value: Any, spec: FieldSpec, where: str, kind: MessageKind) -> str:
    def bad(why: str) -> CebError:
        return CebError(ERR_SCHEMA, "schema_invalid", f"{where}.{spec.name}: {why}", kind.root)

    if spec.kind == "str":
        if not isinstance(value, str):
            raise bad(f"expected a string, got {type(value).__name__}")
        text = value
        if not spec.min_len <= len(text) <= spec.max_len:
            raise bad(f"length {len(text)} outside {spec.min_len}..{spec.max_len}")
        return text
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad(f"expected a number, got {type(value).__name__}")
    if spec.kind == "int":
        if isinstance(value, float) or (isinstance(value, str) and not _INT.match(value)):
            raise bad(f"expected an integer, got {value!r}")
        iv = int(value)
        if not -(2**31) <= iv < 2**31:
            raise bad("integer out of range")
        return str(iv)
    text = value if isinstance(value, str) else repr(value)
    if not _DECIMAL.match(text) or len(text) > 64:
        raise bad(f"expected a decimal number, got {text[:40]!r}")
    digits = text.lstrip("+-")
    int_part, _, frac = digits.partition(".")
    if spec.fraction_digits and len(frac.rstrip("0")) > spec.fraction_digits:
        raise bad(f"more than {spec.fraction_digits} fraction digits")
    if spec.total_digits and len(int_part.lstrip("0")) + len(frac.rstrip("0")) > spec.total_digits:
        raise bad(f"more than {spec.total_digits} digits")
    return canonical_decimal(text)


def canonical_decimal(text: str) -> str:
    """One spelling per amount ("300.00", "300" and 300.0 all become "300"), so that
    the same document sent as XML or as JSON compares equal."""
    try:
        d = Decimal(text)
    except InvalidOperation:
        return text
    return format(d.normalize(), "f")


@lru_cache(maxsize=1)
def decimal_fields() -> dict[str, frozenset[str]]:
    return {entity: frozenset(f.name for f in fields if f.kind == "dec")
            for entity, fields in field_specs().items()} | {"": frozenset()}


def _canonical(fields: dict[str, str], decimals: frozenset[str]) -> dict[str, str]:
    for name in decimals & fields.keys():
        if fields[name]:
            fields[name] = canonical_decimal(fields[name])
    return fields


def decode(data: bytes, accepts: tuple[str, ...] | None = None) -> DecodedMessage:
    """Decode one record: XML if it starts with '<' (after whitespace/BOM), else JSON.

    `accepts` lists the message types the record's topic takes; another type is
    refused before its fields are looked at."""
    if len(data) > MAX_RECORD_BYTES:
        raise CebError(ERR_OVERSIZE, "record_too_large",
                       f"record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
    head = data[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        return decode_xml(data, accepts)
    return decode_json(data, accepts)


# --------------------------------------------------------------------------- receipts

def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def encode_receipts(receipts: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """Group receipts per (sender, type, form) into CEB messages of ≤100 returns.

    XML receipts follow the XSD element order; JSON receipts are a list of
    {"<Entity>": {...}} objects, the mirror of the inbound JSON form.
    """
    groups: dict[tuple[str, str, str, str], list[dict[str, str]]] = {}
    for r in receipts:
        groups.setdefault((r["to"], r["type"], r["fmt"], r["entity"]), []).append(r["body"])
    specs = field_specs()
    out: list[tuple[str, bytes]] = []
    for (to, rtype, fmt, entity), bodies in groups.items():
        order = [f.name for f in specs[entity]]
        for i in range(0, len(bodies), MAX_DOCUMENTS):
            chunk = bodies[i:i + MAX_DOCUMENTS]
            if fmt == "xml":
                parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ceb:CEB{rtype}Message '
                         f'guid="{str(uuid.uuid4()).upper()}" version="1.0" xmlns:ceb="{NS}">']
                for body in chunk:
                    parts.append(f"<ceb:{entity}>")
                    parts.extend(f"<ceb:{k}>{_esc(body[k])}</ceb:{k}>" for k in order if k in body)
                    parts.append(f"</ceb:{entity}>")
                parts.append(f"</ceb:CEB{rtype}Message>")
                out.append((to, "".join(parts).encode("utf-8")))
            else:
                out.append((to, orjson.dumps([{entity: b} for b in chunk])))
    return out
