"""Parcel traceability (源头可溯、去向可查) from stored state, not by re-reading topics.

Given an orderNo (and its platform, when several used it), logisticsNo or
invtNo: the documents with their arrival times and sources, the decision
(rules, evidence, tax), an officer's review, the guarantee hold, the parcel's
gate history (release, exit, cancel, return) and its returns. Personal data is never stored in clear, so none can be shown;
hashes are masked too.
"""
from __future__ import annotations

from typing import Any

import orjson

from processors.aftercare import stamp
from streams import state

DOC_NAMES = {"311": "order", "411": "payment", "511": "waybill", "621": "inventory list"}


def resolve(r: Any, ident: str, buckets: int, ebp: str | None = None, scan: bool = False,
            pay: str | None = None) -> list[str]:
    """The order keys for a logisticsNo or invtNo (by their index), or for an
    orderNo: the platform's given, else one per platform that declared it (by
    the orderNo index and the pending set, state.order_keys_for; with `scan`,
    the keyspace too). With `pay` (a payCode), `ident` is that payment
    company's payTransactionId: the order that holds it (R9's claim; a
    rejected or cancelled order holds none)."""
    if pay:
        found = r.get(state.claim_key("payment", pay, ident, buckets))
        return [state.as_text(found)] if found and r.exists(state.as_text(found)) else []
    if ebp:
        key = state.order_key(ebp, ident, buckets)
        return [key] if r.exists(key) else []
    for kind in ("ln", "inv"):
        found = r.get(state.index_key(kind, ident, buckets))
        if found:
            return [found.decode()]
    return state.order_keys_for(r, ident, buckets, scan)


def _mask(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("h:"):
        return "h:…"
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def lineage(r: Any, ident: str, buckets: int, ebp: str | None = None, scan: bool = False,
            pay: str | None = None) -> dict[str, Any] | None:
    keys = resolve(r, ident, buckets, ebp, scan, pay)
    if not keys:
        return None
    if len(keys) > 1:  # several platforms used this orderNo: the caller names one
        return {"orderNo": ident, "platforms": [state.platform_of(k) for k in keys]}
    key = keys[0]
    order_no, ebp = state.order_no_of(key), state.platform_of(key)  # ebp "": a waybill no list named
    raw = {k.decode(): v for k, v in r.hgetall(key).items()}
    documents = []
    for t in ("311", "411", "511", "621"):
        if "m" + t in raw:
            meta = orjson.loads(raw["m" + t])
            doc = {"type": "CEB" + t, "name": DOC_NAMES[t], "arrivedAt": meta.get("at"),
                   "arrived": stamp(meta.get("at", 0)), "format": meta.get("fmt"),
                   "source": meta.get("src"), "sender": meta.get("snd") or None}
            # An XML message's BaseTransfer and subscribers; a DxpMsg's CopMsgId.
            for name, field in (("copCode", "cop"), ("dxpId", "dxp"), ("subscribers", "sub"), ("copMsgId", "cmi")):
                if meta.get(field):
                    doc[name] = meta[field]
            documents.append(doc)
    decision = orjson.loads(raw["dec"]) if "dec" in raw else None
    final = orjson.loads(raw["final"]) if "final" in raw else None
    out: dict[str, Any] = {"orderNo": order_no, "ebpCode": ebp, "documents": documents,
                           "firstDocumentAt": int(raw["first"]) if "first" in raw else None}
    if decision:
        out["decision"] = _mask({k: decision.get(k) for k in (
            "status", "outcome", "lane", "final", "ruleSetVersion", "reasons", "rules", "invtNo", "preNo",
            "logisticsNo", "dutiablePrice", "tax", "quota", "timestamps", "postAudit")})
    if final:
        out["final"] = _mask({k: final.get(k) for k in ("status", "outcome", "event", "review", "cancel",
                                                        "timestamps")})
    returns = [dict(orjson.loads(v), id=k.split(":", 1)[1]) for k, v in raw.items() if k.startswith("return:")]
    if returns:
        out["returns"] = returns
    ln = (decision or {}).get("logisticsNo")
    if ln:
        parcel = {k.decode(): v.decode() for k, v in r.hgetall(state.parcel_key(ln, buckets)).items()}
        if parcel:
            if "exitedAt" in parcel:  # its exit event not on the broker yet: the gates' outbox holds it
                parcel["exitEventOwed"] = r.zscore(state.exit_outbox_key(state.bucket_of(ln, buckets)), ln) is not None
            out["parcel"] = parcel
    return out


def text(t: dict[str, Any]) -> str:
    if "platforms" in t:
        return (f"order {t['orderNo']} was declared by several platforms ({', '.join(t['platforms'])}): "
                "name one with --ebp")
    lines = [f"order {t['orderNo']} (platform {t['ebpCode']})" if t["ebpCode"] else
             f"order {t['orderNo']}: a waybill no list named"]
    for d in t["documents"]:
        lines.append(f"  {d['arrived']}  {d['type']} {d['name']} ({d['format']}, {d['source']}"
                     + (f", message {d['copMsgId']} from node {d['sender']}" if d.get("copMsgId") else "") + ")")
    d = t.get("decision")
    if d:
        lines.append(f"  {stamp(d['timestamps']['decided'])}  decision {d['status']} {d['outcome']} "
                     f"(lane {d['lane']}, rule set {d['ruleSetVersion']}, list {d.get('invtNo')})")
        for r in d["reasons"]:
            lines.append(f"      {r['rule']}: {r['reason']} {r.get('evidence') or ''}")
        if d.get("tax"):
            lines.append(f"      tax {d['tax']['taxTotal']}")
    f = t.get("final")
    if f:
        what = f.get("event") or ("review " + f["review"]["result"] if f.get("review") else f["outcome"])
        lines.append(f"  final {f['status']} {f['outcome']} ({what})")
    p = t.get("parcel")
    if p:
        lines.append(f"  parcel {p.get('state')}" + (f", exited at gate {p['gate']} {stamp(int(p['exitedAt']))}"
                                                     if p.get("exitedAt") else "")
                     + (" (its exit event not on the broker yet: owed in the gates' outbox)"
                        if p.get("exitEventOwed") else ""))
    for ret in t.get("returns", []):
        lines.append(f"  return {ret['id']}: value {ret['value']} at {stamp(ret['at'])}")
    return "\n".join(lines)
