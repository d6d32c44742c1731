"""After the decision: tax records and periods, cancels (623) and returns (625).

Pure rules for what each event may do; the adapter applies them atomically.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any

from processors.decide import CST, cst_stamp, released_at
from processors.rules import RELEASE

RETURN_WINDOW_MS = 30 * 24 * 3600 * 1000  # GACC Ann. 2020 No. 45: apply within 30 days of release
HELD = 599  # 其它扣留: released by the rules, held for the guarantee
TAX_FIELDS = ("customsTax", "valueAddedTax", "consumptionTax", "taxTotal")


def cents(value: Any) -> int:
    return int((Decimal(str(value or 0)) * 100).to_integral_value())


def tax_period(ms: int) -> str:
    """Half-month aggregation period in China Standard Time: 2026-11-1 or 2026-11-2."""
    day = cst_stamp(ms, 8)
    return f"{day[:4]}-{day[4:6]}-{1 if int(day[6:8]) <= 15 else 2}"


def tax_record(decision: dict[str, Any], now_ms: int, kind: str = "charge", fraction: Decimal = Decimal(1),
               ref: str = "") -> dict[str, Any]:
    """The CEB816 content for a released list, or its (partial) reversal.

    A charge belongs to the period of the release, not of the moment the record
    is produced: a decision re-emitted after a restart (or released at 23:59 on
    the 15th and emitted after midnight) would otherwise be counted in two
    periods, each of which counts a record id once. A reversal belongs to the
    period of the cancel or return (`now_ms`)."""
    tax = decision["tax"]
    at = released_at(decision) if kind == "charge" else now_ms
    sign = -1 if kind == "reversal" else 1
    amounts = {f: sign * int((Decimal(cents(tax[f])) * fraction).to_integral_value()) for f in TAX_FIELDS}
    return {
        "recordId": f"{decision['invtNo']}:{kind}:{ref}" if ref else f"{decision['invtNo']}:{kind}",
        "kind": kind, "invtNo": decision["invtNo"], "orderNo": decision["orderNo"],
        "assureCode": decision.get("assureCode", ""), "ebcCode": decision.get("ebcCode", ""),
        "logisticsCode": decision.get("logisticsCode", ""), "agentCode": decision.get("agentCode", ""),
        "customsCode": decision.get("customsCode", ""), "status": 1,
        "period": tax_period(at), "at": at, "cents": amounts,
        **{f: str(Decimal(v) / 100) for f, v in amounts.items()},
        "lines": tax.get("lines", []) if kind == "charge" else [],
    }


# What a cancel (623) or return (625) must say as the list it undoes did.
# R12: it references the original invtNo; and it names the same parcel,
# seller, declaring agent and buyer (compared as hashes, as stored). One that
# does not is about another list, or from someone the list is not theirs:
# refused as "list not found", without saying whose list it would be.
REFERENCE_FIELDS = (("logisticsNo", "waybill number"), ("logisticsCode", "carrier"), ("ebcCode", "seller"),
                    ("agentCode", "declaring agent"), ("buyerIdNumber", "buyer"))


def reference_mismatch(head: dict[str, Any], decision: dict[str, Any], inventory: dict[str, Any] | None) -> str:
    """"" if the request names this order's list as the list did, else what differs."""
    if str(head.get("invtNo", "")) != str(decision.get("invtNo", "")):
        return f"invtNo {head.get('invtNo', '')} is not this order's list"
    listed = (inventory or {}).get("head") or {}
    for name, what in REFERENCE_FIELDS:
        if name in listed and str(head.get(name, "")) != str(listed[name]):
            return f"its {what} ({name}) is not the list's"
    return ""


def cancel_check(decision: dict[str, Any] | None, head: dict[str, Any],
                 inventory: dict[str, Any] | None) -> tuple[bool, str]:
    """May this list be cancelled (before exit) by this request (its head)?
    (ok, reason if not)."""
    if decision is None:
        return False, "-623003 撤销申请单对应的清单不存在 (list not found)"
    differs = reference_mismatch(head, decision, inventory)
    if differs:
        return False, f"-623003 撤销申请单对应的清单不存在 (list not found: {differs})"
    if decision.get("event") == "cancel":
        return True, ""
    if decision["status"] == 100:
        return False, "-623005 清单状态不允许撤销 (the list was rejected)"
    return True, ""


def refund_check(decision: dict[str, Any] | None, inventory: dict[str, Any] | None, head: dict[str, Any],
                 refund_lines: list[dict[str, Any]], now_ms: int) -> tuple[bool, str, Decimal, Decimal]:
    """(ok, reason, refunded value in CNY, fraction of the list's value) for a
    return (its head and lines)."""
    if decision is None or inventory is None:
        return False, "-625209 退货申请单对应的清单不存在 (list not found)", Decimal(0), Decimal(0)
    differs = reference_mismatch(head, decision, inventory)
    if differs:
        return False, f"-625209 退货申请单对应的清单不存在 (list not found: {differs})", Decimal(0), Decimal(0)
    if decision["status"] != RELEASE:
        return False, "-625005 清单未放行，不能退货 (the list was not released)", Decimal(0), Decimal(0)
    if now_ms - released_at(decision) > RETURN_WINDOW_MS:
        return False, "-625006 超过30天退货期限 (more than 30 days after release)", Decimal(0), Decimal(0)
    lines = {str(line.get("gnum")): line for line in inventory["lines"]}
    total = sum((Decimal(line.get("totalPrice") or 0) for line in inventory["lines"]), Decimal(0))
    value = Decimal(0)
    for r in refund_lines:
        line = lines.get(str(r.get("gnum")))
        if line is None or line.get("gcode") != r.get("gcode"):
            return False, f"-625209 退货商品在原清单中不存在 (line {r.get('gnum')} not in the list)", Decimal(0), \
                Decimal(0)
        qty = Decimal(r.get("qty") or 0)
        if qty <= 0 or qty > Decimal(line.get("qty") or 0):
            return False, f"R12 退货数量超过原清单数量 (line {r.get('gnum')}: {qty} > {line.get('qty')})", \
                Decimal(0), Decimal(0)
        value += Decimal(line.get("price") or 0) * qty
    return True, "", value, (value / total if total else Decimal(0))


def cancel_decision(decision: dict[str, Any], reason: str, now_ms: int) -> dict[str, Any]:
    out = dict(decision)
    out.update({"event": "cancel", "status": 100, "outcome": "cancelled", "lane": "reject", "final": True,
                "cancel": {"reason": reason, "at": now_ms, "previousStatus": decision["status"]},
                "timestamps": dict(decision["timestamps"], cancelled=now_ms)})
    return out


def revocation_event(decision: dict[str, Any], now_ms: int) -> dict[str, Any]:
    return {"logisticsNo": decision.get("logisticsNo", ""), "orderNo": decision["orderNo"],
            "invtNo": decision.get("invtNo", ""), "status": "revoked", "decisionId": decision["decisionId"],
            "revokedAt": now_ms}


def stamp(ms: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(ms / 1000, CST).isoformat(timespec="seconds")
