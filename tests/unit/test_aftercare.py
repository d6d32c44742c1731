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


LIST = {"head": {"logisticsNo": "YT1", "logisticsCode": "L1", "ebcCode": "E1", "agentCode": "A1",
                 "buyerIdNumber": "h:buyer"}, "lines": [{"gnum": "1", "gcode": "3304990000", "qty": "2",
                                                          "price": "10", "totalPrice": "20"}]}
REQUEST = {"invtNo": "I1", **LIST["head"]}


def test_a_cancel_or_return_must_name_the_list_as_the_list_did():
    d = {**released(ms(2026, 11, 20)), "status": 800}
    now = ms(2026, 11, 21)
    assert aftercare.cancel_check(d, REQUEST, LIST) == (True, "")
    assert aftercare.refund_check(d, LIST, REQUEST, [{"gnum": "1", "gcode": "3304990000", "qty": "1"}], now)[:2] == \
        (True, "")
    for change, why in ((("invtNo", "I2"), "invtNo I2 is not this order's list"),
                        (("agentCode", "A2"), "its declaring agent (agentCode) is not the list's"),
                        (("buyerIdNumber", "h:other"), "its buyer (buyerIdNumber) is not the list's"),
                        (("logisticsNo", "YT2"), "its waybill number (logisticsNo) is not the list's")):
        other = dict(REQUEST, **dict([change]))
        assert aftercare.cancel_check(d, other, LIST) == (
            False, f"-623003 撤销申请单对应的清单不存在 (list not found: {why})")
        ok, reason, value, _ = aftercare.refund_check(d, LIST, other, [{"gnum": "1", "gcode": "3304990000",
                                                                       "qty": "1"}], now)
        assert (ok, reason, value) == (False, f"-625209 退货申请单对应的清单不存在 (list not found: {why})", 0)
    # The invtNo is compared however much of the list's head is kept.
    assert aftercare.cancel_check(d, dict(REQUEST, invtNo="I2"), None)[0] is False
    assert aftercare.cancel_check(d, REQUEST, None) == (True, "")
