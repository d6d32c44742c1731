"""The windowed risk counters (state.OBSERVE) on a real Redis: what is counted,
what ages out, and that a set is trimmed when it grows."""
from __future__ import annotations

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
    return [[int(x) for x in reply] for reply in script(keys=keys, args=args)]


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
