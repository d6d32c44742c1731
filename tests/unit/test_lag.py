"""The lag bookkeeping the worker and the gate service share (pure)."""
from __future__ import annotations

from streams.lag import LagBook, drop_series


def test_seconds_behind_count_from_the_newest_record_processed_since_the_partition_was_taken():
    book = LagBook()
    # Taken at 100 s; before that this process had processed from it up to a record written at 40 s.
    assert book.hold(100_000, [("order", 0), ("order", 1)], {("order", 0): 40_000}) == []
    # Behind, nothing processed since it was taken: from the take, not from the old record.
    assert book.behind(("order", 0), 130_000, end=10, done=4, newest_ms=40_000) == (6, 30.0)
    # A record written at 120 s processed since: from it.
    assert book.behind(("order", 0), 130_000, end=10, done=7, newest_ms=120_000) == (3, 10.0)
    # Caught up: 0 and 0, whatever the newest record's age.
    assert book.behind(("order", 1), 130_000, end=5, done=5, newest_ms=1) == (0, 0.0)
    # An end short of the offset done (the embedded broker's end of a batched produce) is not a lag.
    assert book.behind(("order", 1), 130_000, end=3, done=5) == (0, 0.0)


def test_a_partition_given_away_is_returned_once_and_measured_afresh_when_it_comes_back():
    book = LagBook()
    book.hold(0, ["a", "b"])
    assert book.hold(1_000, ["a"]) == ["b"]
    assert book.hold(2_000, ["a"]) == []
    book.hold(5_000, ["a", "b"], {"b": 4_000})  # back, with a record processed at 4 s before
    assert book.behind("b", 9_000, end=2, done=0, newest_ms=4_000) == (2, 4.0)  # from the take at 5 s
    assert book.behind("a", 9_000, end=2, done=0) == (2, 9.0)  # held since 0 s, nothing processed


def test_dropping_a_series_never_set_is_no_error():
    from prometheus_client import CollectorRegistry, Gauge

    g = Gauge("x_lag", "x", ["p"], registry=CollectorRegistry())
    g.labels("1").set(3)
    drop_series([g], "1")
    drop_series([g], "2")
    assert [s for f in g.collect() for s in f.samples] == []
