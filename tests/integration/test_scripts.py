"""Lua scripts on a real Redis, called directly: the windowed risk counters
(what is counted, what ages out, trimming), and the batched writes of MATCH,
CONFIRM, the tax aggregate and the guarantee (one call per batch however
many items, each item counted once)."""
from __future__ import annotations

import hashlib

import redis

from streams import state

DAY = 86_400_000
NOW = 1_795_000_000_000


def observe(r: redis.Redis, *items: tuple[str, str, str], now: int = NOW) -> list[list[int]]:
    script = r.register_script(state.OBSERVE)
    keys = [k for k, _, _ in items]
    args: list[object] = [now]
    for _, family, member in items:
        args += [family, member]
    replies = state.feature_replies((family for _, family, _ in items), script(keys=keys, args=args))
    return [[int(x) for x in reply] for reply in replies]


def test_distinct_members_count_the_window_and_the_grown_set_is_trimmed(redis_url):
    r = redis.Redis.from_url(redis_url)
    k = "clr:f:{f00}:address:h:a"
    r.zadd(k, {"old-buyer": NOW - 40 * DAY, "edge-buyer": NOW - 30 * DAY, "recent-buyer": NOW - DAY})
    assert observe(r, (k, "address", "new-buyer")) == [[2]]
    # Grown past one member: what left the window is gone, the window stays.
    assert sorted(m.decode() for m in r.zrange(k, 0, -1)) == ["new-buyer", "recent-buyer"]
    assert 30 * DAY < r.pttl(k) <= 31 * DAY
    # The same buyer again counts once and moves to the latest time.
    assert observe(r, (k, "address", "recent-buyer"), now=NOW + 1) == [[2]]
    assert r.zscore(k, "recent-buyer") == NOW + 1


def test_a_new_key_counts_one_and_a_stale_set_is_not_counted(redis_url):
    r = redis.Redis.from_url(redis_url)
    fresh, stale = "clr:f:{f01}:phone:h:p", "clr:f:{f02}:phone:h:q"
    r.zadd(stale, {"gone": NOW - 31 * DAY})
    assert observe(r, (fresh, "phone", "b1"), (stale, "phone", "b2")) == [[1], [1]]
    assert r.zcard(fresh) == 1 and r.pttl(fresh) > 30 * DAY


def test_buyer_orders_count_24h_and_7d_once_per_order(redis_url):
    r = redis.Redis.from_url(redis_url)
    k = "clr:f:{f03}:buyer:h:b"
    r.zadd(k, {"o:old|100000|0": NOW - 8 * DAY, "o:week|20000|0": NOW - 2 * DAY, "o:hour|480000|1": NOW - 3_600_000})
    # 24 h: the hour-old order and this one; 7 d: those and the 2-day-old one.
    assert observe(r, (k, "buyer", "o:now|30000|0")) == [[2, 510000, 1, 3, 530000]]
    assert r.zscore(k, "o:old|100000|0") is None
    assert 7 * DAY < r.pttl(k) <= 8 * DAY
    # A replayed order keeps its first time and counts once.
    assert observe(r, (k, "buyer", "o:now|30000|0"), now=NOW + 5) == [[2, 510000, 1, 3, 530000]]
    assert r.zscore(k, "o:now|30000|0") == NOW


def test_match_and_confirm_handle_more_items_than_one_chunk(redis_url):
    # 1,200 new orders in one call: the pending set is written in chunks of
    # 1,000 arguments, with NX in every chunk; CONFIRM removes them the same way.
    r = redis.Redis.from_url(redis_url)
    match, confirm = r.register_script(state.MATCH), r.register_script(state.CONFIRM)
    pending = "clr:p:{o00}"
    keys = [f"clr:o:{{o00}}:M{i}" for i in range(1200)]
    r.zadd(pending, {keys[0]: 5})  # already waiting since 5: NX keeps that time
    args: list[object] = [NOW, 3000]
    for i in range(1200):
        payload = b'{"n":%d}' % i
        args += ["311", payload, b"{}", hashlib.sha1(payload).hexdigest(), "1"]
    replies = match(keys=[pending] + [k for k in keys for _ in (0, 1)], args=args)
    assert replies == [b"A"] * 1200
    assert r.zcard(pending) == 1200 and r.zscore(pending, keys[0]) == 5 and r.zscore(pending, keys[-1]) == NOW
    assert confirm(keys=[pending] + [k for k in keys for _ in (0, 1)], args=[60]) == 1200
    assert r.zcard(pending) == 0 and r.hget(keys[-1], "emit") == b"1" and 0 < r.ttl(keys[-1]) <= 60


class Matcher:
    """MATCH called as the worker calls it: per document its own key and its
    second key (a 621's waybill key), here for orderNo `order_no` in bucket 1."""

    def __init__(self, r: redis.Redis, order_no: str = "X1"):
        self.r, self.script = r, r.register_script(state.MATCH)
        self.order_no, self.pending = order_no, "clr:p:{o01}"

    def order(self, ebp: str = "E1") -> str:
        return f"clr:o:{{o01}}:{ebp}{state.SEP}{self.order_no}"

    def waybill(self, logistics_no: str = "W1") -> str:
        return f"clr:w:{{o01}}:{self.order_no}{state.SEP}L1{state.SEP}{logistics_no}"

    def __call__(self, *docs: tuple, now: int = NOW) -> list[list]:
        """docs: (type, body, appType="1", ebp="E1", waybill="W1")."""
        keys: list[str] = [self.pending]
        args: list[object] = [now, 3000]
        for t, body, *rest in docs:
            app, ebp, wb = (list(rest) + ["1", "E1", "W1"][len(rest):])[:3]
            own = self.waybill(wb) if t == "511" else self.order(ebp)
            keys += [own, self.waybill(wb) if t == "621" else own]
            args += [t, body, b'{"at":%s}' % t.encode(), hashlib.sha1(body).hexdigest(), app]
        return state.match_replies(self.script(keys=keys, args=args))


def test_a_completed_match_returns_only_the_documents_this_call_did_not_store(redis_url):
    # The caller holds what it sent: a document stored by this very call comes
    # back as its position in the call, one stored by an earlier call comes
    # back whole, and a conflicting copy later in the call is not the one stored.
    match = Matcher(redis.Redis.from_url(redis_url))
    k = match.order()
    assert match(("311", b"order"), ("411", b"pay")) == [[b"A"], [b"A"]]
    replies = match(("511", b"waybill"), ("511", b"other waybill"), ("621", b"list"), now=NOW + 10)
    assert replies[0] == [b"A"] and replies[1] == [b"C"]
    assert replies[2][1].decode() == k and int(replies[2][2]) == NOW  # the order, its first arrival
    assert replies[2][:1] + replies[2][3:] == [b"M", b"order", b'{"at":311}', b"pay", b'{"at":411}',
                                               1, None, 3, None]  # the 1st and 3rd documents of the call
    # An identical resend in a later call stores nothing: everything comes back.
    replies = match(("621", b"list"), now=NOW + 20)
    assert len(replies) == 1 and int(replies[0][2]) == NOW
    assert replies[0][:1] + replies[0][3:] == [b"M", b"order", b'{"at":311}', b"pay", b'{"at":411}',
                                               b"waybill", b'{"at":511}', b"list", b'{"at":621}']


def test_a_change_replaces_and_a_delete_removes_a_document_before_the_decision(redis_url):
    r = redis.Redis.from_url(redis_url)
    match = Matcher(r, "X2")
    k, pending = match.order(), match.pending
    assert match(("311", b"order v1", "1")) == [[b"A"]]
    assert match(("311", b"order v2", "1")) == [[b"C"]]  # an add with other content conflicts
    assert match(("311", b"order v2", "2")) == [[b"A"]]  # a change replaces
    assert r.hget(k, "d311") == b"order v2"
    assert match(("411", b"pay", "1"), ("411", b"pay", "3"), ("411", b"pay", "3")) == [[b"A"], [b"X"], [b"N"]]
    assert r.hget(k, "d411") is None and r.zscore(pending, k) == NOW
    # The last document deleted: the order is forgotten, no timeout will decide it.
    assert match(("311", b"order v2", "3")) == [[b"X"]]
    assert not r.exists(k) and r.zscore(pending, k) is None
    # An add and its change in one call: the change is the document stored.
    replies = match(("311", b"o1", "1"), ("311", b"o2", "2"), ("411", b"p", "1"), ("511", b"w", "1"),
                    ("621", b"l", "1"), now=NOW + 5)
    assert [x[0] for x in replies] == [b"A", b"A", b"A", b"A", b"M"]
    assert replies[4][3:] == [2, None, 3, None, 4, None, 5, None]
    assert r.hget(k, "d311") == b"o2"
    # Behind the document that completed the order, in the same call: too late.
    match = Matcher(r, "X3")
    replies = match(("311", b"o"), ("411", b"p"), ("511", b"w"), ("621", b"l"), ("411", b"p2", "2"),
                    ("311", b"o", "3"))
    assert [x[0] for x in replies] == [b"A", b"A", b"A", b"M", b"L", b"L"]
    assert r.hget(match.order(), "d411") == b"p" and r.hget(match.order(), "d311") == b"o"


def test_two_platforms_with_one_order_number_are_two_orders_joined_to_their_own_waybills(redis_url):
    # orderNo is unique per platform only: E1 and E2 both declare X4, each with
    # its own waybill (W1, W2), which names no platform and is joined through
    # the list that names it, whichever arrives first.
    r = redis.Redis.from_url(redis_url)
    match = Matcher(r, "X4")
    k1, k2, w1, w2 = match.order("E1"), match.order("E2"), match.waybill("W1"), match.waybill("W2")
    replies = match(("511", b"w2", "1", "", "W2"), ("311", b"o1", "1", "E1"), ("311", b"o2", "1", "E2"),
                    ("411", b"p1", "1", "E1"), ("411", b"p2", "1", "E2"), ("511", b"w1", "1", "", "W1"))
    assert [x[0] for x in replies] == [b"A"] * 6  # not one duplicate
    assert {m.decode() for m in r.zrange(match.pending, 0, -1)} == {k1, k2, w1, w2}
    # E2's list claims W2, waiting under its own key since the first call.
    replies = match(("621", b"l2", "1", "E2", "W2"), now=NOW + 5)
    assert replies[0][:3] == [b"M", k2.encode(), str(NOW).encode()]
    assert replies[0][3:] == [b"o2", b'{"at":311}', b"p2", b'{"at":411}', b"w2", b'{"at":511}', 1, None]
    assert r.hget(w2, "owner").decode() == k2 and r.hget(w2, "d511") is None
    assert r.zscore(match.pending, w2) is None and r.hget(k2, "w").decode() == w2
    # E1's list claims W1 and completes E1's order, not E2's.
    replies = match(("621", b"l1", "1", "E1", "W1"), now=NOW + 6)
    assert replies[0][:2] == [b"M", k1.encode()] and replies[0][7] == b"w1"
    # A replayed waybill goes to the order that owns it: an identical copy of a
    # complete, undecided order gives the order again (crash recovery).
    assert match(("511", b"w1", "1", "", "W1"))[0][:2] == [b"M", k1.encode()]
    assert match(("511", b"w1 changed", "1", "", "W1")) == [[b"C"]]
    # A third platform's list naming W1 does not take it: refused, stored
    # nowhere, rather than left waiting for a waybill it will never get.
    k3 = match.order("E3")
    assert match(("311", b"o3", "1", "E3"), ("621", b"l3", "1", "E3", "W1")) == [[b"A"], [b"O"]]
    assert r.hget(w1, "owner").decode() == k1 and r.hget(k1, "d511") == b"w1"
    assert set(r.hkeys(k3)) == {b"first", b"d311", b"m311", b"h311"} and r.zscore(match.pending, k3) == NOW
    # Refused again when replayed, or sent as a change; a corrected list (its own waybill) is taken.
    assert match(("621", b"l3", "1", "E3", "W1"), ("621", b"l3'", "2", "E3", "W1")) == [[b"O"], [b"O"]]
    assert match(("621", b"l3", "1", "E3", "W3")) == [[b"A"]]
    assert r.hget(match.waybill("W3"), "owner").decode() == k3 and r.hget(k3, "d621") == b"l3"
    # Confirmed, E1's order expires, and the waybill key that points to it with it.
    assert r.register_script(state.CONFIRM)(keys=[match.pending, k1, w1], args=[60]) == 1
    assert 0 < r.ttl(k1) <= 60 and 0 < r.ttl(w1) <= 60 and r.hget(k1, "d511") is None


def test_a_list_that_names_another_waybill_or_is_deleted_gives_its_waybill_back(redis_url):
    r = redis.Redis.from_url(redis_url)
    match = Matcher(r, "X5")
    k, w1, w2 = match.order(), match.waybill("W1"), match.waybill("W2")
    assert match(("311", b"o"), ("511", b"w1", "1", "", "W1"), ("621", b"l", "1", "E1", "W1")) == [[b"A"]] * 3
    assert r.hget(k, "d511") == b"w1" and r.zscore(match.pending, w1) is None
    # The list is changed to name W2: W1 waits under its own key again, and W2
    # completes the order once it comes.
    assert match(("621", b"l'", "2", "E1", "W2"), now=NOW + 5) == [[b"A"]]
    assert r.hget(k, "d511") is None and r.hget(w1, "d511") == b"w1" and r.hget(w1, "owner") is None
    assert r.zscore(match.pending, w1) == NOW + 5 and r.hget(w2, "owner").decode() == k
    # Deleting the list gives W2 back too; the order waits with its other documents.
    assert match(("511", b"w2", "1", "", "W2"), ("621", b"l'", "3", "E1", "W2"), now=NOW + 6) == [[b"A"], [b"X"]]
    assert r.hget(w2, "d511") == b"w2" and r.hget(w2, "owner") is None and r.hget(k, "w") is None
    assert set(r.hkeys(k)) == {b"first", b"d311", b"m311", b"h311"}
    assert r.zscore(match.pending, w2) == NOW + 6 and r.zscore(match.pending, k) == NOW
    # A lone waybill deleted is forgotten.
    assert match(("511", b"w1", "3", "", "W1")) == [[b"X"]]
    assert not r.exists(w1) and r.zscore(match.pending, w1) is None


def test_tax_aggregate_counts_each_record_once_per_guarantor(redis_url):
    r = redis.Redis.from_url(redis_url)
    tax = r.register_script(state.TAX_AGGREGATE)
    k, ids = state.tax_period_key("2026-11-2"), state.tax_records_key("2026-11-2")
    r.hset(k, "rec:r0", 1)  # counted by a version that kept ids in the sums hash

    def rec(rid, guarantor, cents, sign=1):
        return [rid, guarantor, cents, 2 * cents, 0, 3 * cents, sign]

    assert tax(keys=[k, ids], args=[3600] + rec("r1", "G1", 100)) == 1
    args = rec("r0", "G1", 55) + rec("r1", "G1", 100) + rec("r2", "G1", 10) + rec("r2", "G1", 10) \
        + rec("r3", "G2", 7) + rec("r4", "G1", -100, -1)
    assert tax(keys=[k, ids], args=[3600] + args) == 3  # r0, r1 counted before, r2 once, r3, r4 (a reversal)
    sums = {f.decode(): int(v) for f, v in r.hgetall(k).items() if f != b"rec:r0"}
    assert sums == {"G1:customsTax": 10, "G1:valueAddedTax": 20, "G1:consumptionTax": 0, "G1:taxTotal": 30,
                    "G1:lists": 1, "G2:customsTax": 7, "G2:valueAddedTax": 14, "G2:consumptionTax": 0,
                    "G2:taxTotal": 21, "G2:lists": 1}
    # The ids live beside the sums, for a while: the sums hash stays small.
    assert sorted(f.decode() for f in r.hkeys(ids)) == ["r1", "r2", "r3", "r4"] and 0 < r.ttl(ids) <= 3600


def test_guarantee_charges_in_turn_and_each_list_once(redis_url):
    r = redis.Redis.from_url(redis_url)
    use = r.register_script(state.GUARANTEE_USE)
    g, held = state.guarantee_keys("G9")
    r.hset(g, mapping={"balance": 1000, "used": 100, "i:old": 100})
    r.zadd(held, {"o:old": 1, "o:b": 2})
    args: list[object] = [NOW, "old", 100, "o:old", "a", 500, "o:a", "a", 500, "o:a", "b", 300, "o:b",
                          "c", 200, "o:c"]
    # old: charged before; a: charged (400 left); a again: once; b: charged (100 left); c: held.
    assert state.pairs(use(keys=[g, held], args=args)) == [(1, 900), (1, 400), (1, 400), (1, 100), (0, 100)]
    assert int(r.hget(g, "used")) == 900 and int(r.hget(g, "i:a")) == 500 and int(r.hget(g, "i:b")) == 300
    assert r.hget(g, "i:c") is None
    # Charged lists leave the held set; the list that did not fit joins it, at its first time.
    assert {m.decode(): s for m, s in r.zrange(held, 0, -1, withscores=True)} == {"o:old": 1, "o:c": NOW}
    assert use(keys=[g, held], args=[NOW + 9, "c", 200, "o:c"]) == [0, 100]
    assert r.zscore(held, "o:c") == NOW


def test_order_keys_for_an_order_number_match_it_literally(redis_url):
    # An operator's lookup by orderNo alone reads the orderNo index and the
    # pending set of its slot bucket, and with scan the keyspace; glob
    # characters in an orderNo match only themselves (one slot bucket here,
    # so that every key is a candidate).
    r = redis.Redis.from_url(redis_url)
    keys = {(ebp, order_no): state.order_key(ebp, order_no, 1) for ebp, order_no in (
        ("E1", "A*B"), ("E2", "A*B"), ("E1", "AxB"), ("E1", "A[*]B"), ("E1", "A*B2"), ("E1", "A?B"))}
    for k in keys.values():
        r.hset(k, "first", 1)
    pending = state.pending_key("A*B", 1)
    r.zadd(pending, {k: NOW for (ebp, _), k in keys.items() if ebp == "E1"})
    index = r.register_script(state.INDEX)
    assert index(keys=[state.order_index_key("A*B", 1)], args=[60, "E2", keys["E2", "A*B"]]) == 1
    found = state.order_keys_for(r, "A*B", 1)
    assert found == [keys["E1", "A*B"], keys["E2", "A*B"]]
    assert [state.platform_of(k) for k in found] == ["E1", "E2"]
    assert state.order_keys_for(r, "A[*]B", 1) == [keys["E1", "A[*]B"]]
    assert state.order_keys_for(r, "A?B", 1) == [keys["E1", "A?B"]]
    assert state.order_keys_for(r, "nothing", 1) == []
    # Neither indexed nor pending: found only by a scan.
    r.zrem(pending, keys["E1", "A*B"])
    assert state.order_keys_for(r, "A*B", 1) == [keys["E2", "A*B"]]
    assert state.order_keys_for(r, "A*B", 1, scan=True) == [keys["E1", "A*B"], keys["E2", "A*B"]]
    # An index entry whose order is gone names nothing.
    r.delete(keys["E2", "A*B"])
    assert state.order_keys_for(r, "A*B", 1) == []


def test_index_sets_strings_and_an_order_numbers_hash_with_one_expiry(redis_url):
    r = redis.Redis.from_url(redis_url)
    ln, on = state.index_key("ln", "L1", 1), state.order_index_key("O1", 1)
    index = r.register_script(state.INDEX)
    assert index(keys=[ln, on, on], args=[60, "", "order-a", "E1", "order-a", "E2", "order-b"]) == 3
    assert r.get(ln) == b"order-a" and r.hgetall(on) == {b"E1": b"order-a", b"E2": b"order-b"}
    assert 0 < r.ttl(ln) <= 60 and 0 < r.ttl(on) <= 60


def test_a_final_decision_starts_the_orders_retention_again(redis_url):
    # A release after review or after a guarantee top-up opens the return
    # window later than the decision did: the order and the waybill key its
    # list names are kept the retention from then.
    r = redis.Redis.from_url(redis_url)
    k, w = state.order_key("E1", "RETAIN-1", 1), state.waybill_key("RETAIN-1", "L1", "W1", 1)
    r.hset(k, "dec", b'{"status":300}')
    r.hset(w, "owner", k)
    r.expire(k, 60)
    r.expire(w, 60)
    finalize = r.register_script(state.FINALIZE)
    assert finalize(keys=[k, w], args=[3600, b'{"status":800}']) == [[1]]
    assert 60 < r.ttl(k) <= 3600 and 60 < r.ttl(w) <= 3600 and r.hget(k, "final") == b'{"status":800}'
    r.expire(k, 60)
    assert finalize(keys=[k, w], args=[3600, b'{"status":100}']) == [[0, b'{"status":800}']]
    assert r.ttl(k) <= 60  # a second result changes nothing
    held = state.order_key("E1", "RETAIN-2", 1)  # an order without a list: its own key twice
    r.hset(held, mapping={"dec": b"{}", "final": b'{"status":599}'})
    r.expire(held, 60)
    assert r.register_script(state.RELEASE_HELD)(keys=[held, held], args=[b'{"status":800}', 3600]) == 1
    assert 60 < r.ttl(held) <= 3600


def test_a_decided_orders_waybill_key_is_the_one_its_list_names():
    decision = {"orderKey": state.order_key("E1", "O1"), "orderNo": "O1", "logisticsCode": "L1", "logisticsNo": "W1"}
    assert state.decided_waybill_key(decision) == state.waybill_key("O1", "L1", "W1")
    assert state.decided_waybill_key(dict(decision, logisticsNo="")) == decision["orderKey"]
    alone = {"orderKey": state.waybill_key("O1", "L1", "W1"), "orderNo": "O1", "logisticsCode": "L1",
             "logisticsNo": "W1"}
    assert state.decided_waybill_key(alone) == alone["orderKey"]
