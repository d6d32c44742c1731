"""Pure tests of every comparison rule, the two limits and the decision shape."""
from __future__ import annotations

import copy
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors import decide
from processors.documents import normalise, pii_hash, resident_id_valid
from processors.rules import REJECT, RELEASE, REVIEW, Case, Hit, worst_status
from tests.helpers import order

KEY = b"test-key"


def case_of(o, mutate=None) -> Case:
    docs = {t: normalise(t, copy.deepcopy(h), copy.deepcopy(lines), KEY) for t, (h, lines) in o.docs.items()}
    if mutate:
        mutate(docs)
    return Case(docs, 1, 2, 3)


def reasons(case: Case) -> set[str]:
    return {h.reason for h in decide.SpineRules().evaluate(case)}


def test_consistent_order_passes_every_rule():
    for seq in range(1, 40):
        assert reasons(case_of(order(seq))) == set(), seq


def _set(t, field, value, line=None):
    def f(docs):
        target = docs[t]["head"] if line is None else docs[t]["lines"][line]
        target[field] = value
    return f


@pytest.mark.parametrize("mutate,reason", [
    (_set("311", "acturalPaid", "1"), "ACTURAL_PAID_FORMULA"),
    (_set("411", "amountPaid", "1"), "PAYMENT_AMOUNT_MISMATCH"),
    (_set("311", "goodsValue", "1"), "GOODS_VALUE_MISMATCH"),
    (_set("311", "totalPrice", "0.5", line=0), "LINE_TOTAL_MISMATCH"),
    (_set("621", "totalPrice", "0.5", line=0), "LINE_TOTAL_MISMATCH"),
    (_set("511", "consigneeTelephone", "h:other"), "CONSIGNEE_MISMATCH"),
    (_set("511", "consignee", "h:other"), "CONSIGNEE_MISMATCH"),
    (_set("621", "consigneeAddress", "h:other"), "CONSIGNEE_MISMATCH"),
    (_set("621", "gname", "另一个商品", line=0), "LINE_NAME_MISMATCH"),
    (_set("621", "gnum", "9", line=0), "LINES_NOT_ONE_TO_ONE"),
    (_set("411", "payerIdNumber", "h:other"), "BUYER_NOT_PAYER"),
    (_set("411", "payerName", "h:other"), "BUYER_NOT_PAYER"),
    (_set("621", "buyerIdNumber", "h:other"), "BUYER_NOT_PAYER"),
    (_set("411", "currency", "502"), "CURRENCY_NOT_CNY"),
    (_set("621", "currency", "116", line=0), "CURRENCY_NOT_CNY"),
    (_set("311", "buyerIdType", "2"), "ID_TYPE_NOT_RESIDENT_CARD"),
    (_set("511", "packNo", "2"), "PACK_NO_NOT_ONE"),
    (_set("411", "ebpCode", "OTHER"), "KEY_MISMATCH"),
    (_set("411", "payTransactionId", "OTHER"), "KEY_MISMATCH"),
    (_set("621", "logisticsNo", "OTHER"), "KEY_MISMATCH"),
    (_set("621", "ebcCode", "OTHER"), "KEY_MISMATCH"),
    (_set("621", "tradeMode", "0110"), "TRADE_MODE_INVALID"),
])
def test_each_comparison_rule_fires(mutate, reason):
    hits = decide.SpineRules().evaluate(case_of(order(5), mutate))
    assert reason in {h.reason for h in hits}
    assert all(h.status == REJECT for h in hits)


def test_line_value_mismatch_names_the_field():
    o = order(6, "line_mismatch")
    hits = [h for h in decide.SpineRules().evaluate(case_of(o)) if h.reason == "LINE_VALUE_MISMATCH"]
    assert hits and hits[0].evidence["field"] == "qty"


def test_bonded_list_needs_ledger_fields():
    def drop(docs):
        del docs["621"]["head"]["emsNo"]
    hit = [h for h in decide.SpineRules().evaluate(case_of(order(7), drop)) if h.rule == "compare.trade_mode"]
    assert hit and "emsNo" in hit[0].info


def test_direct_import_needs_transport_fields():
    def direct(docs):
        docs["621"]["head"]["tradeMode"] = "9610"
    hit = [h for h in decide.SpineRules().evaluate(case_of(order(7), direct)) if h.rule == "compare.trade_mode"]
    assert hit and "trafNo" in hit[0].info


def _one_line(price: str, qty: str):
    def f(docs):
        inv = docs["621"]
        inv["lines"] = [dict(inv["lines"][0], price=price, qty=qty,
                             totalPrice=str(float(price) * int(qty)))]
        inv["head"]["freight"] = "0"
        inv["head"]["insuredFee"] = "0"
    return f


@pytest.mark.parametrize("price,qty,fires", [
    ("2500", "2", False),  # exactly 5000: within the limit
    ("2500.01", "2", True),  # one cent over
    ("6000", "1", False),  # single indivisible item: passes, taxed in full
    ("3000", "2", True),
])
def test_single_purchase_limit_boundary(price, qty, fires):
    hits = decide.single_limit(case_of(order(8), _one_line(price, qty)))
    assert bool(hits) is fires
    if fires:
        assert hits[0].code == "-621005"


def test_freight_and_insurance_count_toward_the_limit():
    def f(docs):
        _one_line("2500", "2")(docs)
        docs["621"]["head"]["insuredFee"] = "0.01"
    assert decide.single_limit(case_of(order(8), f))


def test_annual_limit_hit_text_and_code():
    req = decide.QuotaRequest("h:b", "2026", "clr:o:{x}", 100_000, 2_600_000)
    hit = decide.quota_hit(req, 2_550_000)
    assert hit.code == "-621018" and hit.status == REJECT and "25500" in hit.info


def test_quota_request_uses_dutiable_price_and_hashed_buyer():
    o = order(9)
    c = case_of(o)
    req = decide.quota_request(c, "clr:o:{k}")
    expected = decide.dutiable_price(c.docs["621"]) * 100
    assert req.amount == int(expected) and req.year == "2026"
    assert req.buyer.startswith("h:") and o.docs["621"][0]["buyerIdNumber"] not in req.buyer


def test_worst_status_orders_by_severity():
    h = lambda s: Hit("r", "R", s, "")  # noqa: E731
    assert worst_status([]) == RELEASE
    assert worst_status([h(REVIEW), h(500)]) == 500
    assert worst_status([h(500), h(REJECT), h(REVIEW)]) == REJECT


def test_decision_and_release_event_carry_no_personal_data():
    o = order(10)
    c = case_of(o)
    d = decide.build_decision(c, "clr:o:{x}", [], "spine-1", "640120260000000001", "B20260101000000001", 5)
    ev = decide.release_event(d)
    assert d["status"] == RELEASE and ev is not None and ev["logisticsNo"] == o.logistics_no
    clear = [o.docs["311"][0][f] for f in ("buyerIdNumber", "buyerName", "buyerTelephone", "consigneeAddress")]
    text = repr(d) + repr(ev)
    assert not any(v in text for v in clear)
    assert "buyer" not in ev


def test_rejected_decision_has_no_release_event():
    d = decide.build_decision(case_of(order(11)), "k", [Hit("x", "X", REJECT, "no")], "v", "i", "p", 1)
    assert d["status"] == REJECT and decide.release_event(d) is None


def test_timeout_decision_names_missing_documents():
    o = order(12, "missing_payment")
    docs = {t: normalise(t, h, lines, KEY) for t, (h, lines) in o.docs.items()}
    d = decide.timeout_decision("clr:o:{x}", docs, 1, 2, 30)
    assert d["status"] == REJECT and d["missing"] == ["411"]
    assert "CEB411 payment" in d["reasons"][0]["info"]
    assert d["decisionId"] == f"4601XXXXAA:{o.order_no}"


def test_resident_id_check_digit():
    assert resident_id_valid("11010519491231002X")
    assert not resident_id_valid("110105194912310021")
    assert not resident_id_valid("1101051949123100")


def test_pii_hash_is_keyed_and_stable():
    assert pii_hash("张三", b"a") == pii_hash(" 张三 ", b"a") != pii_hash("张三", b"b")


def test_pii_hash_is_keyed_blake2b_for_every_key():
    for key in (b"a", b"b" * 64, b"c" * 80, b"a"):
        expected = hashlib.blake2b("张三".encode(), key=key[:64], digest_size=12).hexdigest()
        assert pii_hash("张三", key) == "h:" + expected


@given(st.text(alphabet="0123456789", min_size=17, max_size=17))
def test_resident_id_check_digit_matches_the_standard(body):
    weights = [2 ** (17 - i) % 11 for i in range(17)]  # GB 11643: W_i = 2^(i-1) mod 11, right to left
    check = "10X98765432"[sum(int(c) * w for c, w in zip(body, weights)) % 11]
    assert resident_id_valid(body + check)
    assert resident_id_valid(body + check.lower())
    wrong = next(c for c in "0123456789X" if c != check)
    assert not resident_id_valid(body + wrong)


def test_resident_id_needs_ascii_digits():
    assert not resident_id_valid("１１０１０５１９４９１２３１００２X")  # full-width digits
    assert not resident_id_valid("11010519491231002X ")


def test_invt_no_layout():
    inv = {"head": {"customsCode": "6401"}, "lines": []}
    invt, pre = decide.assign_numbers(inv, 42, 1_790_000_000_000)
    assert len(invt) == 18 and invt.startswith("6401") and invt[8] == "I" and invt.endswith("000000042")
    assert len(pre) == 18 and pre.startswith("B")


def test_a_districts_serial_starts_above_every_serial_the_year_could_have_issued_at_30_a_second():
    from datetime import datetime

    def ms(*when: int) -> int:
        return int(datetime(*when, tzinfo=decide.CST).timestamp() * 1000)

    assert decide.serial_floor(ms(2026, 1, 1)) == 0  # midnight in Beijing, not UTC
    assert decide.serial_floor(ms(2026, 1, 1, 0, 0, 1)) == 30
    assert decide.serial_floor(ms(2026, 7, 1)) == 181 * 86400 * 30
    year_end = decide.serial_floor(ms(2026, 12, 31, 23, 59, 59))
    assert year_end < 10**9 and year_end > 0.9 * 10**9  # the 9 digits, nearly all of them


def test_an_order_claims_its_waybill_number_and_payment_serial():
    o = order(3)
    claims = decide.unique_claims(case_of(o))
    pay = o.docs["411"][0]
    assert claims == [decide.Claim("waybill", o.docs["621"][0]["logisticsCode"], o.logistics_no),
                      decide.Claim("payment", pay["payCode"], pay["payTransactionId"])]
    # A number the order does not carry is not claimed.
    assert [c.kind for c in decide.unique_claims(case_of(o, _set("411", "payTransactionId", "")))] == ["waybill"]


@pytest.mark.parametrize("kind,reason,code", [("waybill", "DUPLICATE_WAYBILL_NUMBER", "-504015"),
                                              ("payment", "DUPLICATE_PAYMENT", "-401007")])
def test_a_number_held_by_another_order_rejects_with_the_official_code(kind, reason, code):
    hit = decide.duplicate_hit(decide.Claim(kind, "4601XXXXLL", "YT123"), "4601XXXXAA:HN1")
    assert (hit.status, hit.reason, hit.code) == (REJECT, reason, code)
    assert "YT123" in hit.info and "HN1" not in hit.info  # the receipt's text names the number, not the holder
    assert hit.evidence == {"issuer": "4601XXXXLL", "number": "YT123", "heldBy": "4601XXXXAA:HN1"}
