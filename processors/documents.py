"""Normalised documents: what the matcher stores and the rules read.

A normalised document is a plain dict {"type", "head", "lines"} with the CEB
field names. Personal data (buyer/payer identity, names, phones, consignee
address) is replaced by a keyed hash at ingest: every comparison the spine
makes on it is an equality, which a hash preserves, and nothing downstream
(Redis, topics, logs) ever holds the clear value.
"""
from __future__ import annotations

import hashlib
import operator
import re
from typing import Any

DOC_TYPES = ("311", "411", "511", "621")
DOC_NAMES = {"311": "order", "411": "payment", "511": "waybill", "621": "inventory"}

PII_FIELDS = frozenset({
    "buyerIdNumber", "buyerName", "buyerTelephone", "payerIdNumber", "payerName",
    "telephone", "consignee", "consigneeTelephone", "consigneeAddress", "buyerRegNo",
})
ID_FIELDS = ("buyerIdNumber", "payerIdNumber")

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"

Document = dict[str, Any]


_KEYED: dict[bytes, Any] = {}  # key -> BLAKE2b state with the key absorbed


def pii_hash(value: str, key: bytes) -> str:
    """Keyed hash of a personal value; stable across workers sharing the key.
    BLAKE2b in keyed mode is a MAC by construction and several times cheaper
    than HMAC-SHA256 per call; copying a state that has absorbed the key
    saves the key block per call (1.5 -> 1.2 µs)."""
    keyed = _KEYED.get(key)
    if keyed is None:
        keyed = _KEYED[key] = hashlib.blake2b(key=key[:64], digest_size=12)
    h = keyed.copy()
    h.update(value.strip().encode("utf-8"))
    return "h:" + h.hexdigest()


_ID_DIGIT_BIAS = ord("0") * sum(_ID_WEIGHTS)


def resident_id_valid(number: str) -> bool:
    """GB 11643-1999 check digit of an 18-character resident ID number."""
    if len(number) != 18 or not number.isascii() or not number[:17].isdigit():
        return False
    # Weighted sum of the digits over their ASCII codes, in C (3.4 -> 1.1 µs).
    total = sum(map(operator.mul, number[:17].encode(), _ID_WEIGHTS)) - _ID_DIGIT_BIAS
    return _ID_CHECK[total % 11] == number[17].upper()


def normalise(doc_type: str, head: dict[str, Any], lines: list[dict[str, Any]], key: bytes,
              memo: dict[str, str] | None = None) -> Document:
    """Drop empty fields and replace personal data by keyed hashes.

    `memo` (clear value -> hash) lets the documents of one batch share hashes:
    an order's four documents repeat the buyer, payer and consignee (~16
    personal fields, ~6 distinct values). The caller keeps it for one batch
    only, so clear values are held no longer than the batch that carries them."""
    # Empty optional fields are rare: copy in C, filter only when there is one.
    out_head = {k: v for k, v in head.items() if v} if "" in head.values() else dict(head)
    for name in PII_FIELDS & out_head.keys():
        value = out_head[name]
        if name in ID_FIELDS:
            out_head[name + "Valid"] = resident_id_valid(value)
        if memo is None:
            out_head[name] = pii_hash(value, key)
            continue
        hashed = memo.get(value)
        if hashed is None:
            hashed = memo[value] = pii_hash(value, key)
        out_head[name] = hashed
    out_lines = [{k: v for k, v in line.items() if v} if "" in line.values() else dict(line) for line in lines]
    return {"type": doc_type, "head": out_head, "lines": out_lines}


def order_no(doc: Document) -> str:
    return str(doc["head"].get("orderNo", ""))


def ebp_code(docs: dict[str, Document]) -> str:
    for t in ("311", "621", "411"):
        if t in docs:
            return str(docs[t]["head"].get("ebpCode", ""))
    return ""


# Personal values in raw CEB text (XML elements or JSON members named as in
# PII_FIELDS), and anything shaped like a resident ID number wherever it sits
# (a malformed record may carry one under a misspelt name).
_PII_NAMES = "|".join(sorted(PII_FIELDS, key=len, reverse=True))
_PII_XML = re.compile(r"(<(?:[\w.-]+:)?(?:" + _PII_NAMES + r")\b[^>]*>)([^<]*)(</)")
_PII_JSON = re.compile(r'("(?:' + _PII_NAMES + r')"\s*:\s*)("(?:[^"\\]|\\.)*"|[-\d.eE+]+)')
_ID_LIKE = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dXx](?![0-9A-Za-z])")
MASK = "***"


def mask_personal(text: str) -> str:
    """Raw CEB text (XML or JSON, well-formed or not) with personal values replaced by ***."""
    text = _PII_XML.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    text = _PII_JSON.sub(lambda m: m.group(1) + '"' + MASK + '"', text)
    return _ID_LIKE.sub(MASK, text)
