"""Redis keys in a deployment's namespace (CLEARANCE_REDIS_NAMESPACE): built,
and read back, the same way as in the default one."""
from __future__ import annotations

import pytest

from streams import state


@pytest.fixture
def namespace():
    state.reset_namespace()
    state.use_namespace("hn.yp-02")
    yield "hn.yp-02"
    state.reset_namespace()


def every_family() -> dict[str, str]:
    return {
        "order": state.order_key("EBP1", "ORD1"), "waybill": state.waybill_key("ORD1", "L1", "W1"),
        "pending": state.pending_key("ORD1"), "ledger": state.ledger_key("b", "2026"),
        "claim": state.claim_key("waybill", "L1", "W1"), "feature": state.feature_key("buyer", "b"),
        "serial": state.serial_key("4604", "2026"), "parcel": state.parcel_key("W1"),
        "outbox": state.exit_outbox_key(3), "area": state.area_key("A1"), "index": state.index_key("ln", "W1"),
        "tax": state.tax_period_key("2026-11"), "taxrec": state.tax_records_key("2026-11"),
        "guarantee": state.guarantee_keys("G1")[1], "watermark": state.watermark_key("g"),
        "deployments": state.deployments_key(), "halt": state.halt_key(), "epoch": state.epoch_keys(2)[3],
        "released": state.released_count_key(), "replayed": state.replayed_key("clearance.deadletter"),
    }


def test_every_key_family_starts_with_the_namespace_and_keeps_its_slot(namespace):
    state.reset_namespace()
    default = every_family()
    state.use_namespace(namespace)
    mine = every_family()
    for family, key in default.items():
        assert key.startswith("clr:"), family
        assert mine[family] == namespace + key[len("clr"):], family
    assert state.pending_keys(4) == [namespace + ":p:{o%02d}" % b for b in range(4)]
    assert state.exit_outbox_keys(2) == [namespace + ":gate:exits:{p00}", namespace + ":gate:exits:{p01}"]


def test_keys_in_a_namespace_read_back_as_in_the_default_one(namespace):
    order = state.order_key("EBP1", "ORD1")
    waybill = state.waybill_key("ORD1", "L1", "W1")
    assert not state.is_waybill_key(order) and state.is_waybill_key(waybill)
    assert (state.platform_of(order), state.order_no_of(order)) == ("EBP1", "ORD1")
    assert (state.platform_of(waybill), state.order_no_of(waybill)) == ("", "ORD1")
    assert state.order_id(order) == "EBP1:ORD1"
    assert state.slot_tag(order) == state.slot_tag(waybill) == state.slot_tag(state.pending_key("ORD1"))
    # A default-namespace key is not this deployment's waybill.
    state.reset_namespace()
    clr_waybill = state.waybill_key("ORD1", "L1", "W1")
    state.use_namespace(namespace)
    assert not state.is_waybill_key(clr_waybill)


def test_a_process_keeps_the_namespace_it_started_with(namespace):
    state.use_namespace(namespace)  # the same again: nothing changes
    with pytest.raises(RuntimeError, match="already uses the Redis namespace 'hn.yp-02'"):
        state.use_namespace("haikou")
    assert state.order_key("E", "O").startswith(namespace + ":o:")
    with pytest.raises(ValueError):
        state.use_namespace("hn:yp")
