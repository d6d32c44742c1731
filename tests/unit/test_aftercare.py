"""Pure rules after the decision: which half-month period a tax record counts in."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from processors import aftercare
from processors.decide import CST


def ms(*when: int) -> int:
    return int(datetime(*when, tzinfo=CST).timestamp() * 1000)


def released(decided: int, **more: int) -> dict:
    return {"invtNo": "I1", "orderNo": "O1", "assureCode": "G1", "timestamps": {"decided": decided, **more},
            "tax": {"customsTax": "0", "valueAddedTax": "9.1", "consumptionTax": "0", "taxTotal": "9.1"}}


def test_periods_are_half_months_in_china_standard_time():
    assert aftercare.tax_period(ms(2026, 11, 15, 23, 59, 59)) == "2026-11-1"
    assert aftercare.tax_period(ms(2026, 11, 16, 0, 0, 0)) == "2026-11-2"
    # 16:00 UTC on the 15th is midnight in Beijing: the second half already.
    assert aftercare.tax_period(ms(2026, 11, 16, 0, 0, 0) - 1) == "2026-11-1"


def test_a_charge_counts_in_the_period_of_its_release_however_late_it_is_produced():
    d = released(ms(2026, 11, 15, 23, 59, 59))
    first = aftercare.tax_record(d, ms(2026, 11, 15, 23, 59, 59))
    again = aftercare.tax_record(d, ms(2026, 11, 16, 0, 5))  # re-emitted after a restart
    assert first["period"] == again["period"] == "2026-11-1"
    assert first["recordId"] == again["recordId"] and first["cents"] == again["cents"]


def test_a_list_held_for_its_guarantee_counts_when_the_top_up_released_it():
    d = released(ms(2026, 11, 14), guaranteed=ms(2026, 11, 17))
    assert aftercare.tax_record(d, ms(2026, 11, 17, 0, 1))["period"] == "2026-11-2"


def test_a_reversal_counts_in_the_period_of_the_cancel_or_return():
    d = released(ms(2026, 11, 3))
    record = aftercare.tax_record(d, ms(2026, 12, 1), "reversal", Decimal("0.5"), "R1")
    assert record["period"] == "2026-12-1" and record["cents"]["taxTotal"] == -455
