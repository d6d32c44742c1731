"""Decide: rule hits + quota result -> one decision, its release event and receipts.

The spine's rule set is the comparison (compare.py) plus the two purchase
limits. The annual limit needs the cross-order ledger, so deciding is two
steps: `SpineRules.evaluate` gives the hits that need no shared state and
`quota_request` says what to reserve; the adapter reserves it atomically and
`build_decision` folds the answer in.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache
from typing import Any, NamedTuple

from processors import compare
from processors.documents import DOC_NAMES, DOC_TYPES
from processors.rules import LANE_STATUS, LANES, OUTCOMES, REJECT, RELEASE, Case, Hit, worst_lane, worst_status

SINGLE_LIMIT = Decimal("5000")
ANNUAL_LIMIT = Decimal("26000")
CST = timezone(timedelta(hours=8))


def dutiable_price(inventory: dict[str, Any]) -> Decimal:
    """Goods + freight + insurance, the base of both limits (DOMAIN.md §3.2)."""
    goods = sum((compare.dec(line, "totalPrice") for line in inventory["lines"]), Decimal(0))
    h = inventory["head"]
    return goods + compare.dec(h, "freight") + compare.dec(h, "insuredFee")


def case_price(case: Case) -> Decimal:
    """The dutiable price of a case, computed once: the limits, the ledgers, the
    risk counters and the decision all read it."""
    price = case.features.get("_price")
    if price is None:
        price = case.features["_price"] = dutiable_price(case.docs["621"])
    return price


def single_indivisible_item(inventory: dict[str, Any]) -> bool:
    lines = inventory["lines"]
    return len(lines) == 1 and compare.dec(lines[0], "qty") == 1


def single_limit(case: Case) -> list[Hit]:
    """¥5,000 per purchase (−621005), except one indivisible item, taxed in full."""
    inventory = case.docs["621"]
    price = case_price(case)
    if price <= SINGLE_LIMIT or single_indivisible_item(inventory):
        return []
    return [Hit("policy.single_limit", "SINGLE_LIMIT_EXCEEDED", REJECT,
                f"清单的购买金额超过单笔限额: dutiable price {price} > {SINGLE_LIMIT}", "-621005",
                {"dutiablePrice": str(price), "limit": str(SINGLE_LIMIT)})]


class SpineRules:
    """Comparison rules and the single-purchase limit."""

    version = "spine-1"

    def evaluate(self, case: Case) -> list[Hit]:
        return compare.compare(case) + single_limit(case)


class QuotaRequest(NamedTuple):
    """One reservation against a buyer's annual ledger, counted once per order.
    (A named tuple: several are made per order, and a frozen dataclass costs
    one interpreted setattr per field to build.)"""

    buyer: str  # keyed hash of the buyer ID number
    year: str
    order: str  # the order's ledger entry
    amount: int  # cents for the amount ledger, grams for a quantity ledger
    limit: int
    ledger: str = ""  # "" = the ¥26,000 amount ledger; "qty:<hs8>" = a positive-list quantity cap
    rule: str = "policy.annual_limit"
    reason: str = "ANNUAL_LIMIT_EXCEEDED"
    code: str = "-621018"


ANNUAL_LIMIT_CENTS = int(ANNUAL_LIMIT * 100)


class Claim(NamedTuple):
    """A number only one order may use (R9, DOMAIN.md §2.1): a waybill number
    per carrier for six months, a payment serial per payment company. Each
    order that can still be released claims its own; a number another order
    holds rejects the later one with the official duplicate code."""

    kind: str  # "waybill" or "payment"
    issuer: str  # logisticsCode / payCode
    number: str  # logisticsNo / payTransactionId


# kind -> (document, issuer field, number field, rule, reason, official code, what the receipt says)
_UNIQUE = {
    "waybill": ("621", "logisticsCode", "logisticsNo", "keys.unique_waybill", "DUPLICATE_WAYBILL_NUMBER",
                "-504015", "运单编号重复: waybill {issuer}/{number} is already declared for another order "
                           "(a waybill number is unique per carrier for six months)"),
    "payment": ("411", "payCode", "payTransactionId", "keys.unique_payment", "DUPLICATE_PAYMENT",
                "-401007", "支付流水号重复: payment {issuer}/{number} is already declared for another order "
                           "(a payment serial is unique per payment company)"),
}


def unique_claims(case: Case, kinds: tuple[str, ...] = ("waybill", "payment")) -> list[Claim]:
    """The numbers of these kinds this order must hold alone (none that it does not carry)."""
    return claims_of(case.docs, kinds)


def claims_of(docs: dict[str, dict[str, Any]], kinds: tuple[str, ...]) -> list[Claim]:
    """unique_claims from whichever of the documents are at hand (a decided
    order keeps its list, not its payment: streams/migrate.py)."""
    out = []
    for kind in kinds:
        doc, issuer, number, *_rest = _UNIQUE[kind]
        h = docs[doc]["head"] if doc in docs else {}
        value = h.get(number)
        if value:
            out.append(Claim(kind, str(h.get(issuer, "")), str(value)))
    return out


def duplicate_hit(claim: Claim, holder: str) -> Hit:
    """The reject for a number another order holds. The receipt does not name
    that order (it may be another platform's); the decision's evidence does."""
    _doc, _i, _n, rule, reason, code, text = _UNIQUE[claim.kind]
    return Hit(rule, reason, REJECT, text.format(issuer=claim.issuer, number=claim.number), code,
               {"issuer": claim.issuer, "number": claim.number, "heldBy": holder})


def quota_request(case: Case, order_key: str, limit_cents: int = ANNUAL_LIMIT_CENTS) -> QuotaRequest:
    inv = case.docs["621"]["head"]
    year = (inv.get("declTime") or inv.get("appTime") or "")[:4]
    cents = int((case_price(case) * 100).to_integral_value())
    return QuotaRequest(str(inv.get("buyerIdNumber", "")), year, order_key, cents, limit_cents)


def quota_hit(req: QuotaRequest, used_before: int) -> Hit:
    """The reject a failed reservation gives (−621018 for the amount ledger)."""
    if not req.ledger:
        used = Decimal(used_before) / 100
        limit = Decimal(req.limit) / 100
        return Hit(req.rule, req.reason, REJECT, f"已用购买额度为{used}，本次购买将超过年度限额{limit}", req.code,
                   {"usedBefore": str(used), "amount": str(Decimal(req.amount) / 100), "limit": str(limit),
                    "year": req.year})
    hs8 = req.ledger.split(":", 1)[1]
    return Hit(req.rule, req.reason, REJECT,
               f"annual quantity cap for {hs8} exceeded: {used_before / 1000:g} kg used, "
               f"{req.amount / 1000:g} kg more, cap {req.limit / 1000:g} kg", req.code,
               {"hs8": hs8, "usedKg": used_before / 1000, "amountKg": req.amount / 1000, "capKg": req.limit / 1000})


def needs_quota(hits: list[Hit]) -> bool:
    """Quota is reserved for every outcome that can still end in release."""
    return worst_status(hits) != REJECT


@lru_cache(maxsize=4096)
def cst_stamp(ms: int, digits: int = 17) -> str:
    """YYYYMMDDhhmmssSSS in China Standard Time, as CEB receipts spell time."""
    t = datetime.fromtimestamp(ms / 1000, CST)
    return (t.strftime("%Y%m%d%H%M%S") + f"{ms % 1000:03d}")[:digits]


# A district's serial counter starts the year, or starts again after Redis lost
# it, at this many per second since the year began (China Standard Time):
# above every serial issued before, unless the district averaged more lists a
# second since 1 January; a counter that restarted at 1 would issue the year's
# invtNos a second time. 30/s leaves 5 % of the 9 digits' room at year end.
SERIAL_FLOOR_PER_S = 30


def serial_floor(now_ms: int) -> int:
    now = datetime.fromtimestamp(now_ms / 1000, CST)
    return int((now - now.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)).total_seconds()) \
        * SERIAL_FLOOR_PER_S


def assign_numbers(inventory: dict[str, Any], serial: int, now_ms: int) -> tuple[str, str]:
    """invtNo (district + year + I + 9-digit serial) and preNo ("B" + date + serial)."""
    h = inventory["head"]
    day = cst_stamp(now_ms, 8)
    invt_no = h.get("invtNo") or f"{h.get('customsCode', '0000')}{day[:4]}I{serial % 10**9:09d}"
    pre_no = h.get("preNo") or f"B{day}{serial % 10**9:09d}"
    return invt_no, pre_no


_RELEASE_FIELDS = ("logisticsNo", "logisticsCode", "ebpCode", "ebcCode", "agentCode", "assureCode",
                   "customsCode", "portCode", "areaCode", "emsNo", "tradeMode", "billNo", "copNo",
                   "grossWeight", "netWeight", "packNo")


def build_decision(case: Case, order_key: str, hits: list[Hit], rules_version: str,
                   invt_no: str, pre_no: str, now_ms: int, quota: dict[str, Any] | None = None) -> dict[str, Any]:
    lane = worst_lane(hits)
    status = LANE_STATUS[lane]
    inv = case.docs["621"]["head"]
    order = case.docs["311"]["head"]
    decision: dict[str, Any] = {
        "decisionId": f"{order.get('ebpCode', '')}:{order.get('orderNo', '')}",
        "orderKey": order_key,
        "orderNo": order.get("orderNo", ""),
        "ebpCode": order.get("ebpCode", ""),
        "status": status,
        "outcome": OUTCOMES[status],
        "lane": lane,
        "postAudit": lane == "blue",
        # 300/500 wait for an officer's result; 800/100 are final.
        "final": status in (RELEASE, REJECT),
        "reasons": [h.as_dict() for h in hits],
        "rules": sorted({h.rule for h in hits}),
        "ruleSetVersion": rules_version,
        "invtNo": invt_no,
        "preNo": pre_no,
        "dutiablePrice": str(case_price(case)),
        "buyer": inv.get("buyerIdNumber", ""),
        "timestamps": {
            "firstDocument": case.first_ms,
            "completingDocument": case.complete_ms,
            "completingRecord": case.complete_record_ms,
            "decided": now_ms,
        },
    }
    for f in _RELEASE_FIELDS:
        if f in inv:
            decision[f] = inv[f]
    if quota is not None:
        decision["quota"] = quota
    return decision


def timeout_decision(order_key: str, docs: dict[str, dict[str, Any]], first_ms: int,
                     now_ms: int, timeout_s: float) -> dict[str, Any]:
    missing = [t for t in DOC_TYPES if t not in docs]
    names = ", ".join(f"CEB{t} {DOC_NAMES[t]}" for t in missing)
    ebp = ""
    order_no = order_key
    for t in ("311", "621", "411", "511"):
        if t in docs:
            ebp = ebp or str(docs[t]["head"].get("ebpCode", ""))
            order_no = str(docs[t]["head"].get("orderNo", order_no))
    hit = Hit("match.timeout", "MATCH_TIMEOUT", REJECT,
              f"no complete match after {timeout_s:g}s: missing {names}", "",
              {"missing": ",".join(missing)})
    decision_id = f"{ebp}:{order_no}"
    if docs.keys() == {"511"}:
        # A waybill that no list named: it names no platform, and several
        # platforms' waybills may share the orderNo, so its own key names it.
        wb = docs["511"]["head"]
        decision_id = f"waybill:{wb.get('logisticsCode', '')}:{wb.get('logisticsNo', '')}"
    decision: dict[str, Any] = {
        "decisionId": decision_id,
        "orderKey": order_key,
        "orderNo": order_no,
        "ebpCode": ebp,
        "status": REJECT,
        "outcome": OUTCOMES[REJECT],
        "lane": LANES[REJECT],
        "final": True,
        "reasons": [hit.as_dict()],
        "rules": [hit.rule],
        "ruleSetVersion": "match",
        "missing": missing,
        "timestamps": {"firstDocument": first_ms, "decided": now_ms},
    }
    if "621" in docs:
        inv = docs["621"]["head"]
        for f in _RELEASE_FIELDS:
            if f in inv:
                decision[f] = inv[f]
    elif "511" in docs:  # a waybill alone: its numbers, so that trace finds it by logisticsNo
        for f in ("logisticsCode", "logisticsNo"):
            if f in docs["511"]["head"]:
                decision[f] = docs["511"]["head"][f]
    return decision


def released_at(decision: dict[str, Any]) -> int:
    """When the list was released: by an officer, by a guarantee top-up after a
    hold, or by the rules at the decision."""
    t = decision["timestamps"]
    return int(t.get("reviewed") or t.get("guaranteed") or t["decided"])


def release_event(decision: dict[str, Any]) -> dict[str, Any] | None:
    """What a gate needs to let a parcel out, and nothing personal."""
    if decision["status"] != RELEASE:
        return None
    event = {f: decision[f] for f in _RELEASE_FIELDS if f in decision}
    event.update({
        "orderNo": decision["orderNo"],
        "invtNo": decision["invtNo"],
        "status": RELEASE,
        "decisionId": decision["decisionId"],
        "ruleSetVersion": decision["ruleSetVersion"],
        "postAudit": decision.get("postAudit", False),
        "releasedAt": released_at(decision),
    })
    return event


def review_decision(decision: dict[str, Any], result: str, officer: str, note: str, now_ms: int) -> dict[str, Any]:
    """The final decision after an officer's manual review or inspection."""
    status = RELEASE if result == "release" else REJECT
    final = dict(decision)
    final.update({
        "status": status, "outcome": OUTCOMES[status], "final": True,
        "lane": decision["lane"] if status == RELEASE else "reject",
        "provisional": {"status": decision["status"], "lane": decision["lane"]},
        "review": {"result": result, "officer": officer, "note": note, "at": now_ms},
        "timestamps": dict(decision["timestamps"], reviewed=now_ms),
    })
    final["reasons"] = list(decision["reasons"]) + [{
        "rule": "officer.review", "reason": "OFFICER_RELEASE" if status == RELEASE else "OFFICER_REJECT",
        "status": status, "lane": final["lane"], "info": note or f"officer {officer}: {result}"}]
    final["rules"] = sorted(set(decision["rules"]) | {"officer.review"})
    return final
