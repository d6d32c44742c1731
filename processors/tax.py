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


def _q(d: Decimal) -> Decimal:
    return d.quantize(CENT, rounding=ROUND_HALF_UP)


def line_tax(price: Decimal, vat: Decimal, consumption: Decimal, mfn: Decimal, full: bool) -> dict[str, Decimal]:
    """Taxes on one line's dutiable price."""
    if full:
        customs = price * mfn
        ct = (price + customs) / (1 - consumption) * consumption
        vat_amount = (price + customs + ct) * vat
    else:
        customs = Decimal(0)
        ct = price / (1 - consumption) * consumption * WITHIN_LIMIT_FACTOR
        vat_amount = (price + price / (1 - consumption) * consumption) * vat * WITHIN_LIMIT_FACTOR
    return {"customsTax": customs, "valueAddedTax": vat_amount, "consumptionTax": ct}


def comprehensive_tax(lines: list[dict[str, Any]], freight: Decimal, insured: Decimal, full: bool) -> dict[str, Any]:
    """lines: [{gnum, gcode, value (Decimal), vat, consumption, mfn}] → the CEB816-shaped tax."""
    goods = sum((line["value"] for line in lines), Decimal(0))
    extra = freight + insured
    out_lines = []
    totals = {"customsTax": Decimal(0), "valueAddedTax": Decimal(0), "consumptionTax": Decimal(0)}
    for line in lines:
        share = extra * line["value"] / goods if goods else Decimal(0)
        price = line["value"] + share
        t = line_tax(price, line["vat"], line["consumption"], line["mfn"], full)
        rounded = {k: _q(v) for k, v in t.items()}
        for k, v in rounded.items():
            totals[k] += v
        out_lines.append({"gnum": line["gnum"], "gcode": line["gcode"], "taxPrice": str(_q(price)),
                          **{k: str(v) for k, v in rounded.items()}})
    total = sum(totals.values(), Decimal(0))
    return {"full": full, "lines": out_lines, **{k: str(v) for k, v in totals.items()}, "taxTotal": str(total)}
