"""Facts a rule condition can test, computed from one complete match, the
rule set's reference data and the cross-order counters the adapter looked up.

Every fact has a name, a type and a one-line meaning in `FACTS`; the rule-set
loader refuses a condition on an unknown fact, and the exported schema lists
them for rule editors.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from processors import decide, tax
from processors.compare import dec
from processors.rules import Case

# name -> (type, meaning). Types: number, bool, string, list.
FACTS: dict[str, tuple[str, str]] = {
    "dutiable_price": ("number", "goods + freight + insurance of the inventory list (CNY)"),
    "goods_value": ("number", "sum of the list's line totals (CNY)"),
    "line_count": ("number", "number of list lines"),
    "single_indivisible_item": ("bool", "one line with quantity 1"),
    "trade_mode": ("string", "1210 bonded or 9610 direct"),
    "not_listed": ("list", "goods codes (8-digit) not on the positive list"),
    "excluded_lines": ("list", "goods codes excluded by a positive-list remark"),
    "bonded_only_lines": ("list", "goods codes the positive list allows in bonded import (1210) only"),
    "quarantine_lines": ("list", "goods codes under quarantine control"),
    "prohibited_lines": ("list", "goods codes prohibited for retail import"),
    "high_risk_origins": ("list", "origin country codes on the high-risk list"),
    "min_price_ratio": ("number", "lowest declared unit price / reference price over the lines (1 if none known)"),
    "expected_weight": ("number", "sum of qty × reference unit weight (kg), 0 if unknown"),
    "waybill_weight": ("number", "gross weight on the waybill (kg)"),
    "gross_weight": ("number", "gross weight on the inventory list (kg)"),
    "net_weight": ("number", "net weight on the inventory list (kg)"),
    "weight_ratio": ("number", "list gross weight / expected weight (1 if unknown)"),
    "weight_excess": ("number", "list gross weight − expected weight (kg; 0 if unknown)"),
    "net_over_gross": ("bool", "net weight greater than gross weight"),
    "tax_computed": ("number", "comprehensive tax computed from the positive list's rates (CNY)"),
    "tax_declared": ("number", "taxTotal declared on the order (CNY)"),
    "tax_diff": ("number", "absolute difference between declared and computed tax (CNY)"),
    "buyer_id_valid": ("bool", "buyer resident ID number has a valid check digit"),
    "payer_id_valid": ("bool", "payer resident ID number has a valid check digit"),
    "ebp_credit": ("string", "credit class of the platform: advanced, general, dishonest, unknown"),
    "ebc_credit": ("string", "credit class of the seller"),
    "pay_credit": ("string", "credit class of the payment company"),
    "logistics_credit": ("string", "credit class of the logistics company"),
    "any_dishonest": ("bool", "any of the four enterprises is dishonest (失信)"),
    "all_advanced": ("bool", "platform, seller, payment and logistics companies are all advanced-certified"),
    "negative_listed": ("list", "enterprise codes on the negative list"),
    "unregistered": ("list", "enterprise codes of the order not in the enterprise register (reference data)"),
    "sender_unverified": ("list", "documents whose sender is not who their BaseTransfer names (R13): the "
                                  "data-exchange node that sent a DxpMsg is not its dxpId, or is not a node the "
                                  "register lists for its copCode, or the message was signed by a certificate "
                                  "the register does not list for its copCode"),
    "random_draw": ("number", "uniform [0,1) drawn from the order number and the rule set's seed"),
    "buyer_orders_24h": ("number", "the buyer's decided orders in the last 24 h, this one included"),
    "buyer_amount_24h": ("number", "the buyer's dutiable amount in the last 24 h (CNY)"),
    "buyer_orders_7d": ("number", "the buyer's orders in the last 7 days"),
    "buyer_amount_7d": ("number", "the buyer's dutiable amount in the last 7 days (CNY)"),
    "buyer_near_limit_24h": ("number", "the buyer's orders in 24 h priced within the near-limit band"),
    "address_distinct_buyers_30d": ("number", "distinct buyer IDs shipping to this consignee address in 30 days"),
    "phone_distinct_buyers_30d": ("number", "distinct buyer IDs using this consignee phone in 30 days"),
    "buyer_distinct_addresses_30d": ("number", "distinct consignee addresses of this buyer in 30 days"),
}

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Reference:
    positive: dict[str, dict[str, Any]] = field(default_factory=dict)
    goods: dict[str, dict[str, Any]] = field(default_factory=dict)
    enterprises: dict[str, dict[str, Any]] = field(default_factory=dict)
    high_risk_countries: frozenset[str] = frozenset()
    quarantine_prefixes: tuple[str, ...] = ()
    prohibited_prefixes: tuple[str, ...] = ()
    random_seed: str = ""
    near_limit_band: tuple[float, float] = (4500.0, 5000.0)


class Observation(NamedTuple):
    """A cross-order counter to update and read for one order (see streams/state.py OBSERVE)."""

    family: str  # "buyer", "address", "phone", "buyer_addresses"
    entity: str  # hashed buyer / address / phone
    member: str  # what is counted: the order (with amount) or a distinct buyer/address


def observations(case: Case, order_key: str, ref: Reference) -> list[Observation]:
    inv, waybill = case.docs["621"]["head"], case.docs["511"]["head"]
    buyer = str(inv.get("buyerIdNumber", ""))
    price = float(decide.case_price(case))
    lo, hi = ref.near_limit_band
    near = 1 if lo <= price <= hi else 0
    address = str(waybill.get("consigneeAddress", ""))
    phone = str(waybill.get("consigneeTelephone", ""))
    return [
        Observation("buyer", buyer, f"{order_key}|{int(round(price * 100))}|{near}"),
        Observation("address", address, buyer),
        Observation("phone", phone, buyer),
        Observation("buyer_addresses", buyer, address),
    ]


def _credit(ref: Reference, code: Any) -> str:
    e = ref.enterprises.get(str(code or ""))
    return str(e["credit"]) if e else "unknown"


def registered_certs(enterprises: dict[str, Any], cop_code: str) -> frozenset[str]:
    """The signing cards (SHA-256 fingerprints) the enterprise register lists
    for a copCode; empty when it lists none, and then nothing is checked."""
    return (enterprises.get(cop_code) or {}).get("certs") or frozenset()


def sender_unverified(metas: dict[str, dict[str, Any]], enterprises: dict[str, Any]) -> list[str]:
    """R13, "the BaseTransfer copCode must match the client's identity", per
    document (its arrival metadata): a message in a DxpMsg envelope was sent
    by the envelope's SenderId, which the exchange authenticated, so its
    BaseTransfer dxpId (the sender's exchange user, as the message says) must
    be that node; and where the enterprise register lists the nodes of the
    BaseTransfer copCode (column dxp_nodes), the node must be one of them
    (for bare XML, the node the message names). JSON says neither: nothing to
    check. A dxpId longer than a node id (16 characters, the envelope's
    limit; the XSD allows 30) is another form of exchange user number (two
    official samples carry EXP2016..., 19 characters): it is not compared.
    A signed message (its signature verified at ingest, topics/xmlsig.py) must
    be signed by a certificate the register lists for its copCode (column
    certs), where it lists any."""
    out = []
    for t, meta in sorted(metas.items()):
        fmt = meta.get("fmt")
        if fmt != "dxp" and fmt != "xml":
            continue
        named = str(meta.get("dxp") or "")
        if len(named) > 16:
            named = ""
        node = str(meta.get("snd") or "") if fmt == "dxp" else named
        if fmt == "dxp" and named and named != node:
            out.append(f"{t}: sent by node {node}, BaseTransfer dxpId {named}")
        cop = str(meta.get("cop") or "")
        registered = enterprises.get(cop) or {}
        nodes = registered.get("nodes")
        if nodes and node and node not in nodes:
            out.append(f"{t}: node {node} is not one of copCode {cop}'s")
        signer = str(meta.get("sig") or "")
        certs = registered_certs(enterprises, cop)
        if certs and signer and signer not in certs:
            out.append(f"{t}: signed by certificate {signer[:16]}…, not one registered to copCode {cop}")
    return out


# Facts the adapter supplies from the cross-order counters (0 when absent).
COUNTER_FACTS = ("buyer_orders_24h", "buyer_amount_24h", "buyer_orders_7d", "buyer_amount_7d",
                 "buyer_near_limit_24h", "address_distinct_buyers_30d", "phone_distinct_buyers_30d",
                 "buyer_distinct_addresses_30d")
ZERO = Decimal(0)


def facts(case: Case, ref: Reference) -> dict[str, Any]:
    docs = case.docs
    order, payment, waybill, inventory = docs["311"], docs["411"], docs["511"], docs["621"]
    inv = inventory["head"]
    not_listed, excluded, bonded_only, quarantine, prohibited, origins = [], [], [], [], [], []
    ratios, expected_weight, goods_value = [], ZERO, ZERO
    tax_lines = []
    for line in inventory["lines"]:
        gcode = str(line.get("gcode", ""))
        hs8 = gcode[:8]
        value = dec(line, "totalPrice")
        goods_value += value
        entry = ref.positive.get(hs8)
        if entry is None:
            not_listed.append(hs8)
        else:
            if entry["excluded"]:
                excluded.append(hs8)
            if entry["bonded_only"]:
                bonded_only.append(hs8)
            tax_lines.append({"gnum": line.get("gnum"), "gcode": gcode, "value": value,
                              "vat": entry["vat"], "consumption": entry["consumption"], "mfn": entry["mfn"]})
        if ref.quarantine_prefixes and gcode.startswith(ref.quarantine_prefixes):
            quarantine.append(hs8)
        if ref.prohibited_prefixes and gcode.startswith(ref.prohibited_prefixes):
            prohibited.append(hs8)
        if line.get("country") in ref.high_risk_countries:
            origins.append(str(line["country"]))
        goods = ref.goods.get(gcode)
        if goods:
            if goods["reference_price"] > 0:
                ratios.append(float(dec(line, "price") / goods["reference_price"]))
            expected_weight += dec(line, "qty") * goods["unit_weight"]
    freight, insured = dec(inv, "freight"), dec(inv, "insuredFee")
    price = goods_value + freight + insured
    single = len(inventory["lines"]) == 1 and dec(inventory["lines"][0], "qty") == 1
    computed = tax.comprehensive_tax(tax_lines, freight, insured, full=single and price > decide.SINGLE_LIMIT)
    declared = dec(order["head"], "taxTotal")
    tax_total = Decimal(computed["taxTotal"])
    gross, net = dec(inv, "grossWeight"), dec(inv, "netWeight")
    pay_code, logistics_code = payment["head"].get("payCode"), waybill["head"].get("logisticsCode")
    enterprises = ref.enterprises
    credits = []
    for c in (inv.get("ebpCode"), inv.get("ebcCode"), pay_code, logistics_code):
        e = enterprises.get(str(c or ""))
        credits.append(e["credit"] if e else "unknown")
    negative, unregistered = [], []
    for c in {inv.get("ebpCode"), inv.get("ebcCode"), pay_code, logistics_code, inv.get("agentCode")}:
        if c:
            e = enterprises.get(str(c))
            if e is None:
                unregistered.append(str(c))
            elif e.get("negative"):
                negative.append(str(c))
    # Drawn per (ebpCode, orderNo), the order's identity: platforms that share
    # an orderNo are sampled independently.
    draw = int.from_bytes(hashlib.sha256(f"{ref.random_seed}:{inv.get('ebpCode', '')}:{order['head'].get('orderNo', '')}"
                                         .encode()).digest()[:8], "big") / 2**64
    out: dict[str, Any] = {
        "dutiable_price": float(price),
        "goods_value": float(goods_value),
        "line_count": len(inventory["lines"]),
        "single_indivisible_item": single,
        "trade_mode": str(inv.get("tradeMode", "")),
        "not_listed": not_listed, "excluded_lines": excluded, "bonded_only_lines": bonded_only,
        "quarantine_lines": quarantine, "prohibited_lines": prohibited, "high_risk_origins": origins,
        "min_price_ratio": min(ratios) if ratios else 1.0,
        "expected_weight": float(expected_weight),
        "waybill_weight": float(dec(waybill["head"], "weight")),
        "gross_weight": float(gross), "net_weight": float(net),
        "weight_ratio": float(gross / expected_weight) if expected_weight else 1.0,
        "weight_excess": float(gross - expected_weight) if expected_weight else 0.0,
        "net_over_gross": net > gross,
        "tax_computed": float(tax_total),
        "tax_declared": float(declared),
        "tax_diff": abs(float(declared - tax_total)),
        "buyer_id_valid": bool(order["head"].get("buyerIdNumberValid", False)),
        "payer_id_valid": bool(payment["head"].get("payerIdNumberValid", False)),
        "ebp_credit": credits[0], "ebc_credit": credits[1], "pay_credit": credits[2],
        "logistics_credit": credits[3],
        "any_dishonest": "dishonest" in credits,
        "all_advanced": all(c == "advanced" for c in credits),
        "negative_listed": sorted(negative),
        # Without an enterprise register, nothing counts as unregistered.
        "unregistered": sorted(unregistered) if enterprises else [],
        "sender_unverified": sender_unverified(case.metas, enterprises) if case.metas else [],
        "random_draw": draw,
        "_tax": computed,
    }
    features = case.features
    for name in COUNTER_FACTS:
        out[name] = features.get(name, 0)
    return out
