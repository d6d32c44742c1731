"""Receipts to senders: CEB312/412/512/622 and the CEB900 format-check receipt.

A receipt here is a plain dict {"type", "to", "fmt", "entity", "body"}; the
codec in topics/ceb.py groups them into CEB messages (≤100 returns each) in
the form the sender used (XML or JSON). The receipt's guid is the guid of the
document it answers, so a sender can link them.
"""
from __future__ import annotations

import re
import uuid
from typing import Any

from processors.decide import cst_stamp
from processors.rules import OUTCOMES, REJECT

Receipt = dict[str, Any]

ENTITY = {"311": ("312", "OrderReturn"), "411": ("412", "PaymentReturn"),
          "511": ("512", "LogisticsReturn"), "621": ("622", "InventoryReturn"),
          "623": ("624", "InvtCancelReturn"), "625": ("626", "InvtRefundReturn")}
KEY_FIELDS = {"311": ("ebpCode", "ebcCode", "orderNo"), "411": ("payCode", "payTransactionId"),
              "511": ("logisticsCode", "logisticsNo"), "621": (), "623": (), "625": ()}
SENDER_FIELD = {"311": "ebpCode", "411": "payCode", "511": "logisticsCode", "621": "agentCode",
                "623": "agentCode", "625": "agentCode"}
LIST_DOCS = ("621", "623", "625")  # receipts keyed by copNo/preNo/invtNo

ACCEPTED = "2"
MATCHED = "120"
# Official "duplicate" codes per document type (SPEC table 7-2).
DUPLICATE_CODE = {"311": "-301010", "411": "-401007", "511": "-504015", "621": "-621004"}
STATUS_TEXT = {800: "放行", 300: "人工审核", 500: "查验", 100: "海关退单"}


def sender(doc: dict[str, Any], meta: dict[str, Any]) -> str:
    return str(meta.get("snd") or doc["head"].get(SENDER_FIELD[doc["type"]], "") or "unknown")


def document_receipt(doc: dict[str, Any], meta: dict[str, Any], status: str, info: str, now_ms: int,
                     invt_no: str = "", pre_no: str = "") -> Receipt:
    t = doc["type"]
    rtype, entity = ENTITY[t]
    h = doc["head"]
    body: dict[str, str] = {"guid": str(h.get("guid", ""))}
    if t in LIST_DOCS:
        for f in ("customsCode", "ebpCode", "ebcCode", "agentCode"):
            if h.get(f):
                body[f] = str(h[f])
        body["copNo"] = str(h.get("copNo") or h.get("orderNo", ""))[:20]
        body["preNo"] = pre_no or str(h.get("preNo", ""))
        invt_no = invt_no or (str(h.get("invtNo", "")) if t != "621" else "")
        if len(invt_no) == 18:
            body["invtNo"] = invt_no
    else:
        for f in KEY_FIELDS[t]:
            body[f] = str(h.get(f, ""))
    body["returnStatus"] = status
    body["returnTime"] = cst_stamp(now_ms)
    body["returnInfo"] = info[:1000] or "-"
    to = sender(doc, meta)
    receipt: Receipt = {"type": rtype, "to": to, "fmt": meta.get("fmt", "json"), "entity": entity, "body": body}
    subscribers = meta.get("sub")
    if subscribers:  # nodes the message subscribed to its receipts (BaseSubscribe)
        receipt["cc"] = [node for node in subscribers if node != to]
    return receipt


APP_TEXT = {"1": "新增", "2": "变更", "3": "删除"}  # appType: add, change, delete


def arrival_receipt(doc: dict[str, Any], meta: dict[str, Any], now_ms: int) -> Receipt:
    h = doc["head"]
    return document_receipt(doc, meta, ACCEPTED, f"{APP_TEXT.get(h.get('appType'), '新增')}申报成功"
                            f"[{h.get('guid', '')}]", now_ms, pre_no=_undecided_pre_no(doc, now_ms))


def refused_receipt(doc: dict[str, Any], meta: dict[str, Any], info: str, now_ms: int) -> Receipt:
    """A 100 for a document refused before any decision (a list's carries the placeholder preNo)."""
    return document_receipt(doc, meta, "100", info, now_ms, pre_no=_undecided_pre_no(doc, now_ms))


def nothing_to_delete_receipt(doc: dict[str, Any], meta: dict[str, Any], now_ms: int) -> Receipt:
    return refused_receipt(doc, meta, "删除申报失败: no document of this type and key was declared "
                           "(or it was deleted already)", now_ms)


def too_late_receipt(doc: dict[str, Any], meta: dict[str, Any], decision: dict[str, Any] | None,
                     now_ms: int) -> Receipt:
    """A change or delete (appType 2/3) of a document whose order is decided, or
    complete and being decided (`decision` None)."""
    what = APP_TEXT.get(doc["head"].get("appType"), "")
    state = f"is decided ({decision_info(decision)})" if decision else "was complete and is being decided"
    decision = decision or {}
    return document_receipt(doc, meta, "100", f"{what}申报失败: the order {state}; "
                            "a decided list is withdrawn with a cancel (623)", now_ms,
                            decision.get("invtNo", ""), decision.get("preNo", "") or _pre_no_placeholder(doc, now_ms))


def conflict_receipt(doc: dict[str, Any], meta: dict[str, Any], now_ms: int) -> Receipt:
    code = DUPLICATE_CODE[doc["type"]]
    return refused_receipt(doc, meta, f"{code} 重复申报: a different document with the same key was declared "
                           "first; the first stays authoritative", now_ms)


def waybill_taken_receipt(doc: dict[str, Any], meta: dict[str, Any], now_ms: int) -> Receipt:
    """A list naming a waybill that another order's list named first. The other
    order is not named: it may be another platform's."""
    h = doc["head"]
    return refused_receipt(doc, meta,
                           f"清单申报失败: waybill {h.get('logisticsCode', '')}/{h.get('logisticsNo', '')} is "
                           "already named by the list of another order; the first list keeps it. Check the "
                           "logisticsNo, or have the other list changed or deleted first", now_ms)


def _undecided_pre_no(doc: dict[str, Any], now_ms: int) -> str:
    """The preNo of a receipt before any decision: only a list's receipt carries one."""
    return _pre_no_placeholder(doc, now_ms) if doc["type"] in LIST_DOCS else ""


def _pre_no_placeholder(doc: dict[str, Any], now_ms: int) -> str:
    # Before a decision there is no assigned preNo; the 622 schema still needs 18 chars.
    return str(doc["head"].get("preNo") or f"B{cst_stamp(now_ms, 8)}000000000")


def decision_info(decision: dict[str, Any]) -> str:
    status = decision["status"]
    text = STATUS_TEXT.get(status, OUTCOMES.get(status, ""))
    reasons = "; ".join(
        (f"{r['code']} " if r.get("code") else "") + f"{r['reason']}: {r['info']}" for r in decision["reasons"])
    return f"{text}" + (f" ({reasons})" if reasons else "")


def decision_receipts(decision: dict[str, Any], docs: dict[str, dict[str, Any]],
                      metas: dict[str, dict[str, Any]], now_ms: int) -> list[Receipt]:
    """Order/payment/waybill get 120 (matched) unless the list is rejected (100);
    the inventory list gets the decision status."""
    status = decision["status"]
    info = decision_info(decision)
    out = []
    for t, doc in docs.items():
        meta = metas.get(t, {})
        if t == "621":
            out.append(document_receipt(doc, meta, str(status), info, now_ms,
                                        decision.get("invtNo", ""), decision.get("preNo", "")
                                        or _pre_no_placeholder(doc, now_ms)))
        elif status == REJECT:
            out.append(document_receipt(doc, meta, "100", info, now_ms))
        else:
            out.append(document_receipt(doc, meta, MATCHED, "海关入库 (three-document match passed)", now_ms))
    return out


# Characters XML 1.0 cannot carry at all, even as a reference (NUL, most C0
# controls, surrogates, U+FFFE/FFFF).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """Text a receipt can carry in XML: what XML cannot is written as \\uXXXX,
    so a receipt about a message with a NUL in it still says where."""
    return _NOT_XML.sub(lambda c: f"\\u{ord(c.group()):04x}", text) if _NOT_XML.search(text) else text


def error_receipt(to: str, fmt: str, status: str, info: str, message_type: str, ori_msg_id: str,
                  now_ms: int) -> Receipt:
    # The only receipt that echoes what could not be read (the reason, the
    # record's key as its sender): made safe for XML here, once.
    body = {
        "guid": str(uuid.uuid4()).upper(),
        "returnStatus": status,
        "returnInfo": xml_safe(info[:5000]),
        "returnTime": cst_stamp(now_ms),
        "oriCopMsgId": xml_safe(ori_msg_id[:255]),
        "oriMessageType": xml_safe(message_type[:15]),
        "oriBizMessage": "",
    }
    return {"type": "900", "to": xml_safe(to) or "unknown", "fmt": fmt, "entity": "MessageReturn", "body": body}


def receipt_address(doc: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """What a later 622 for this inventory list needs (kept on the decision, so an
    officer's result can be answered after the documents are gone)."""
    h = doc["head"]
    out: dict[str, Any] = {"to": sender(doc, meta), "fmt": str(meta.get("fmt", "json"))}
    if meta.get("sub"):
        out["sub"] = list(meta["sub"])
    for f in ("guid", "customsCode", "ebpCode", "ebcCode", "agentCode", "copNo", "orderNo"):
        if h.get(f):
            out[f] = str(h[f])
    return out


def final_inventory_receipt(decision: dict[str, Any], now_ms: int) -> Receipt:
    """The 622 with the final status of a reviewed list."""
    addr = decision.get("receipt", {})
    head = {k: v for k, v in addr.items() if k not in ("to", "fmt", "sub")}
    doc = {"type": "621", "head": head, "lines": []}
    return document_receipt(doc, {"snd": addr.get("to", ""), "fmt": addr.get("fmt", "json"), "sub": addr.get("sub")},
                            str(decision["status"]), decision_info(decision), now_ms,
                            decision.get("invtNo", ""), decision.get("preNo", ""))
