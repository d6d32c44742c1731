"""The platform simulator's numbering: one platform as before, several with
orderNos that recur across platforms and keys that stay unique."""
from __future__ import annotations

from collections import Counter

from streams.simulator import PLATFORMS, generate


def test_one_platform_numbers_orders_in_sequence():
    orders = list(generate(5, seed=3, start=10, prefix="SIM"))
    assert [o.order_no for o in orders] == [f"SIM20261126{i:010d}" for i in range(10, 15)]
    assert {o.ebp_code for o in orders} == {PLATFORMS[0][0]}


def test_several_platforms_number_their_own_orders():
    orders = list(generate(300, seed=3, prefix="SIM", platforms=3))
    assert {o.ebp_code for o in orders} == {p[0] for p in PLATFORMS}
    by_platform: dict[str, list[str]] = {}
    for o in orders:
        by_platform.setdefault(o.ebp_code, []).append(o.order_no)
    # Each platform's own numbering runs from the start without gaps ...
    for numbers in by_platform.values():
        assert numbers == [f"SIM20261126{i:010d}" for i in range(len(numbers))]
    # ... so orderNos recur across platforms, while (ebpCode, orderNo), the
    # waybill and the payment stay unique.
    assert max(Counter(o.order_no for o in orders).values()) == 3
    assert len({(o.ebp_code, o.order_no) for o in orders}) == 300
    assert len({o.logistics_no for o in orders}) == 300
    assert len({o.docs["311"][0]["payTransactionId"] for o in orders}) == 300
    for o in orders:
        for t in ("311", "411", "621"):
            if t in o.docs:
                assert o.docs[t][0]["ebpCode"] == o.ebp_code
