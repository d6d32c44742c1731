"""Cross-border e-commerce comprehensive tax (跨境电商综合税), DOMAIN.md §3.3.

Within the limits: tariff 0, consumption tax and VAT at 70 % of the statutory
amount, i.e. rate = (c + v) / (1 − c) × 0.7 on the dutiable price. Above the
single limit for one indivisible item: tariff at the MFN rate and VAT and
consumption tax in full. Freight and insurance are spread over the lines in
proportion to their value, so the line taxes add up to the order's tax.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

CENT = Decimal("0.01")
WITHIN_LIMIT_FACTOR = Decimal("0.7")
ZERO = Decimal(0)
ONE = Decimal(1)
CENTS_ZERO = Decimal("0.00")


def line_tax(price: Decimal, vat: Decimal, consumption: Decimal, mfn: Decimal, full: bool) -> tuple[Decimal, ...]:
    """Taxes on one line's dutiable price: (customs, VAT, consumption tax).

    Each amount is one exact product of decimals divided once by (1 − c), so
    it is rounded once (to 28 digits, far below a cent) before the rounding to
    the cent; with no consumption tax (most goods) it is exact."""
    den = ONE - consumption
    if full:
        # ct = (p + tariff)·c/(1−c) and VAT = (p + tariff + ct)·v = (p + tariff)·v/(1−c).
        customs = price * mfn
        base = price + customs
        if not consumption:
            return customs, base * vat, ZERO
        return customs, base * vat / den, base * consumption / den
    # ct = p/(1−c)·c·0.7 and VAT = (p + p/(1−c)·c)·v·0.7 = p·v·0.7/(1−c).
    scaled = price * WITHIN_LIMIT_FACTOR
    if not consumption:
        return ZERO, scaled * vat, ZERO
    return ZERO, scaled * vat / den, scaled * consumption / den


def comprehensive_tax(lines: list[dict[str, Any]], freight: Decimal, insured: Decimal, full: bool) -> dict[str, Any]:
    """lines: [{gnum, gcode, value (Decimal), vat, consumption, mfn}] → the CEB816-shaped tax."""
    goods = sum((line["value"] for line in lines), ZERO)
    extra = freight + insured
    out_lines = []
    customs_total = vat_total = ct_total = CENTS_ZERO
    for line in lines:
        value = line["value"]
        price = value + extra * value / goods if extra and goods else value
        customs, vat, ct = line_tax(price, line["vat"], line["consumption"], line["mfn"], full)
        # Most lines owe neither tariff nor consumption tax: zeros need no rounding.
        customs = customs.quantize(CENT, ROUND_HALF_UP) if customs else CENTS_ZERO
        vat = vat.quantize(CENT, ROUND_HALF_UP)
        ct = ct.quantize(CENT, ROUND_HALF_UP) if ct else CENTS_ZERO
        customs_total += customs
        vat_total += vat
        ct_total += ct
        out_lines.append({"gnum": line["gnum"], "gcode": line["gcode"],
                          "taxPrice": str(price.quantize(CENT, ROUND_HALF_UP)),
                          "customsTax": str(customs), "valueAddedTax": str(vat), "consumptionTax": str(ct)})
    # Sums of amounts in cents are in cents: no rounding left to do.
    return {"full": full, "lines": out_lines, "customsTax": str(customs_total),
            "valueAddedTax": str(vat_total), "consumptionTax": str(ct_total),
            "taxTotal": str(customs_total + vat_total + ct_total)}
