"""The three-document comparison (三单对碰), DOMAIN.md §2.1–2.3.

Each check returns zero or more `Hit`s with status 100 (reject): the standard
states these as hard consistency rules. Amounts are compared exactly on
Decimal values; the only tolerance is a rounding of line arithmetic to the
cent, since price × qty of a 5-decimal price legitimately has more digits than
the declared total.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from processors.rules import REJECT, Case, Hit

CNY = "142"
CENT = Decimal("0.01")
ZERO = Decimal(0)


def dec(fields: dict[str, Any], name: str) -> Decimal:
    text = fields.get(name) or "0"
    # Amounts recur across orders (prices, freight, "0"): Decimals are immutable,
    # so one per spelling is shared; the memo is bounded.
    value = _DECIMALS.get(text)
    if value is None:
        try:
            value = Decimal(text)
        except InvalidOperation:
            return Decimal("NaN")
        if len(_DECIMALS) > 100_000:
            _DECIMALS.clear()
        _DECIMALS[text] = value
    return value


_DECIMALS: dict[Any, Decimal] = {}


def _hit(rule: str, reason: str, info: str, code: str = "", **evidence: Any) -> Hit:
    return Hit(rule, reason, REJECT, info, code, {k: str(v) for k, v in evidence.items()})


def actural_paid(order: dict[str, Any], payment: dict[str, Any]) -> list[Hit]:
    """R1: acturalPaid = goodsValue + freight + taxTotal − discount = amountPaid."""
    hits = []
    o = order["head"]
    expected = dec(o, "goodsValue") + dec(o, "freight") + dec(o, "taxTotal") - dec(o, "discount")
    paid = dec(o, "acturalPaid")
    if expected != paid:
        hits.append(_hit("compare.actural_paid_formula", "ACTURAL_PAID_FORMULA",
                         f"acturalPaid {paid} != goodsValue+freight+taxTotal-discount {expected}",
                         acturalPaid=paid, expected=expected))
    amount = dec(payment["head"], "amountPaid")
    if amount != paid:
        hits.append(_hit("compare.payment_amount", "PAYMENT_AMOUNT_MISMATCH",
                         f"payment amountPaid {amount} != order acturalPaid {paid}",
                         amountPaid=amount, acturalPaid=paid))
    return hits


def line_totals(doc: dict[str, Any], label: str) -> list[Hit]:
    """R3: totalPrice = price × qty on every line (gift lines have price 0)."""
    for line in doc["lines"]:
        product = dec(line, "price") * dec(line, "qty")
        total = dec(line, "totalPrice")
        # Exactly equal is the common case and needs no rounding.
        if product != total and product.quantize(CENT) != total.quantize(CENT):
            product = product.quantize(CENT)
            return [_hit(f"compare.{label}_line_total", "LINE_TOTAL_MISMATCH",
                         f"{label} line {line.get('gnum')}: price×qty {product} != totalPrice {total}",
                         gnum=line.get("gnum"), product=product, totalPrice=total)]
    return []


def goods_value(order: dict[str, Any]) -> list[Hit]:
    """R2: goodsValue is the transaction value of the lines."""
    total = ZERO
    for line in order["lines"]:
        total += dec(line, "totalPrice")
    value = dec(order["head"], "goodsValue")
    if total != value:
        return [_hit("compare.goods_value", "GOODS_VALUE_MISMATCH",
                     f"sum of order line totals {total} != goodsValue {value}",
                     linesTotal=total, goodsValue=value)]
    return []


def consignee(order: dict[str, Any], waybill: dict[str, Any], inventory: dict[str, Any]) -> list[Hit]:
    """R4: consignee name, phone and address on the order equal the waybill's."""
    o, w = order["head"], waybill["head"]
    diff = [f for f in ("consignee", "consigneeTelephone", "consigneeAddress") if o.get(f) != w.get(f)]
    if inventory["head"].get("consigneeAddress") != w.get("consigneeAddress"):
        diff.append("inventory.consigneeAddress")
    if diff:
        return [_hit("compare.consignee", "CONSIGNEE_MISMATCH",
                     "consignee differs between order/inventory and waybill: " + ", ".join(diff),
                     fields=",".join(diff))]
    return []


def inventory_lines(order: dict[str, Any], inventory: dict[str, Any]) -> list[Hit]:
    """R5: inventory lines map 1:1 to order lines by gnum; names, qty, prices, totals equal."""
    olines = {line.get("gnum"): line for line in order["lines"]}
    ilines = {line.get("gnum"): line for line in inventory["lines"]}
    if len(ilines) != len(inventory["lines"]):
        return [_hit("compare.inventory_lines", "DUPLICATE_GNUM",
                     "inventory list repeats a gnum", "-621027")]
    if olines.keys() != ilines.keys():
        return [_hit("compare.inventory_lines", "LINES_NOT_ONE_TO_ONE",
                     f"inventory gnums {sorted(ilines, key=str)} != order gnums {sorted(olines, key=str)}",
                     orderGnums=sorted(olines, key=str), inventoryGnums=sorted(ilines, key=str))]
    for gnum, il in ilines.items():
        ol = olines[gnum]
        if il.get("gname") != ol.get("itemName"):
            return [_hit("compare.inventory_lines", "LINE_NAME_MISMATCH",
                         f"line {gnum}: inventory gname differs from order itemName", gnum=gnum)]
        for f in ("qty", "price", "totalPrice"):
            # Amounts arrive in one canonical spelling (topics/ceb.py), so equal
            # text is the common case and equal value; only different text is parsed.
            if il.get(f) != ol.get(f) and dec(il, f) != dec(ol, f):
                return [_hit("compare.inventory_lines", "LINE_VALUE_MISMATCH",
                             f"line {gnum}: inventory {f} {il.get(f)} != order {ol.get(f)}",
                             gnum=gnum, field=f, inventory=il.get(f), order=ol.get(f))]
    return []


def buyer_is_payer(order: dict[str, Any], payment: dict[str, Any], inventory: dict[str, Any]) -> list[Hit]:
    """Buyer = payer (GACC 2018 No. 194 item 4); the list's buyer is the order's buyer."""
    o, p, i = order["head"], payment["head"], inventory["head"]
    diff = []
    if o.get("buyerIdNumber") != p.get("payerIdNumber"):
        diff.append("payerIdNumber")
    if o.get("buyerName") != p.get("payerName"):
        diff.append("payerName")
    for f in ("buyerIdNumber", "buyerName"):
        if i.get(f) != o.get(f):
            diff.append("inventory." + f)
    if diff:
        return [_hit("compare.buyer_is_payer", "BUYER_NOT_PAYER",
                     "buyer and payer differ: " + ", ".join(diff), fields=",".join(diff))]
    return []


def fixed_codes(docs: dict[str, dict[str, Any]]) -> list[Hit]:
    """R6–R8: currency 142, ID type 1, one parcel per waybill and list."""
    hits = []
    bad_currency = []
    for t, doc in docs.items():
        if doc["head"].get("currency", CNY) != CNY:
            bad_currency.append(f"{t}.head")
        for line in doc["lines"]:
            if line.get("currency", CNY) != CNY:
                bad_currency.append(f"{t}.line{line.get('gnum')}")
    if bad_currency:
        hits.append(_hit("compare.currency", "CURRENCY_NOT_CNY",
                         "currency must be 142 (CNY): " + ", ".join(bad_currency[:5]),
                         where=",".join(bad_currency[:5])))
    o, p, w, i = docs["311"]["head"], docs["411"]["head"], docs["511"]["head"], docs["621"]["head"]
    if o.get("buyerIdType") != "1" or i.get("buyerIdType") != "1" or p.get("payerIdType") != "1":
        id_types = [(t, f) for t, f in (("311", "buyerIdType"), ("621", "buyerIdType"), ("411", "payerIdType"))
                    if docs[t]["head"].get(f) != "1"]
        hits.append(_hit("compare.id_type", "ID_TYPE_NOT_RESIDENT_CARD",
                         "buyer/payer ID type must be 1 (resident ID card)",
                         where=",".join(f"{t}.{f}" for t, f in id_types)))
    if w.get("packNo") != "1" or i.get("packNo") != "1":
        packs = [t for t in ("511", "621") if docs[t]["head"].get("packNo") != "1"]
        hits.append(_hit("compare.pack_no", "PACK_NO_NOT_ONE",
                         "packNo must be 1 (one parcel per waybill and list)", where=",".join(packs)))
    return hits


def keys(docs: dict[str, dict[str, Any]]) -> list[Hit]:
    """R9/R10 and §2.2: the linking keys agree across the four documents."""
    o, p, w, i = (docs[t]["head"] for t in ("311", "411", "511", "621"))
    diff = []
    if not o.get("ebpCode") == p.get("ebpCode") == i.get("ebpCode"):
        diff.append("ebpCode")
    if o.get("ebcCode") != i.get("ebcCode"):
        diff.append("ebcCode")
    if o.get("payTransactionId") and o.get("payTransactionId") != p.get("payTransactionId"):
        diff.append("payTransactionId")
    if o.get("payCode") and o.get("payCode") != p.get("payCode"):
        diff.append("payCode")
    if w.get("logisticsNo") != i.get("logisticsNo"):
        diff.append("logisticsNo")
    if w.get("logisticsCode") != i.get("logisticsCode"):
        diff.append("logisticsCode")
    if diff:
        return [_hit("compare.keys", "KEY_MISMATCH",
                     "linking keys differ across documents: " + ", ".join(diff), fields=",".join(diff))]
    return []


def trade_mode_fields(inventory: dict[str, Any]) -> list[Hit]:
    """R11: 1210 bonded needs emsNo/areaCode/itemRecordNo; 9610 direct needs trafNo/voyageNo/billNo."""
    h = inventory["head"]
    mode = h.get("tradeMode")
    if mode == "1210":
        missing = [f for f in ("emsNo", "areaCode") if not h.get(f)]
        missing += [f"line{line.get('gnum')}.itemRecordNo" for line in inventory["lines"]
                    if not line.get("itemRecordNo")]
    elif mode == "9610":
        missing = [f for f in ("trafNo", "voyageNo", "billNo") if not h.get(f)]
    else:
        return [_hit("compare.trade_mode", "TRADE_MODE_INVALID",
                     f"tradeMode must be 1210 or 9610, got {mode!r}", tradeMode=mode)]
    if missing:
        return [_hit("compare.trade_mode", "TRADE_MODE_FIELDS_MISSING",
                     f"tradeMode {mode} requires " + ", ".join(missing), tradeMode=mode,
                     missing=",".join(missing))]
    return []


def compare(case: Case) -> list[Hit]:
    d = case.docs
    order, payment, waybill, inventory = d["311"], d["411"], d["511"], d["621"]
    return (
        actural_paid(order, payment)
        + goods_value(order)
        + line_totals(order, "order")
        + line_totals(inventory, "inventory")
        + consignee(order, waybill, inventory)
        + inventory_lines(order, inventory)
        + buyer_is_payer(order, payment, inventory)
        + fixed_codes(d)
        + keys(d)
        + trade_mode_fields(inventory)
    )
