"""The benchmark harness's own logic: schedules, the books, backlog growth, reports."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hdrh.histogram import HdrHistogram

from benchmarks import openloop, report
from benchmarks.throughput import backlog_growing
from streams.simulator import generate


def _orders(n=200, mix=None):
    return list(generate(n, seed=4, prefix="HB", mix=mix or openloop.REALISTIC))


def test_per_document_schedule_keeps_the_rate_and_names_the_completing_document():
    orders = _orders()
    load = openloop.build(orders, rate=1000, per_record=1, gap_s=0.02, duplicate_rate=0.02, seed=1)
    assert [s.t for s in load.sends] == sorted(s.t for s in load.sends)
    # offered rate: documents (duplicates included) over the schedule's length
    assert load.documents == sum(s.docs for s in load.sends)
    before = 0
    for o in orders:
        mine = [s for s in load.sends if s.key == o.order_no.encode() and not s.duplicate]
        # each order starts when the documents scheduled before it have had their time at 1,000/s
        assert min(s.t for s in mine) == pytest.approx(before / 1000)
        before += sum(1 for s in load.sends if s.key == o.order_no.encode())
        assert sorted(s.doc_type for s in mine) == sorted(o.docs)
        if len(o.docs) == 4:
            # the completing document is the last of the order's first copies, `gap` after the first
            assert load.completes[o.order_no] == max(s.t for s in mine)
            assert load.completes[o.order_no] - min(s.t for s in mine) == pytest.approx(0.06)
        else:
            assert o.order_no not in load.completes  # decided by the match timeout, not timed
    dups = [s for s in load.sends if s.duplicate]
    assert dups and load.duplicates == len(dups)
    assert all(d.t > load.completes.get(d.key.decode(), -1) for d in dups)  # a duplicate never completes


def test_arrival_order_is_shuffled():
    load = openloop.build(_orders(mix={"ok": 1.0}), rate=1000, per_record=1, gap_s=0.0, duplicate_rate=0, seed=3)
    firsts = {}
    for s in load.sends:
        firsts.setdefault(s.key, s.doc_type)
    assert len(set(firsts.values())) == 4  # every type comes first for some order


def test_batch_schedule_groups_one_type_per_record_and_completes_on_the_last_record():
    orders = _orders(300)
    load = openloop.build(orders, rate=3000, per_record=100, fmt="json", duplicate_rate=0, seed=2)
    assert all(s.docs <= 100 for s in load.sends) and len(load.sends) == 12
    chunk = orders[:100]
    last = max(s.t for s in load.sends[:4])
    assert all(load.completes[o.order_no] == last for o in chunk if len(o.docs) == 4)
    assert abs(load.documents / (load.seconds + 100 / 3000) - 3000) / 3000 < 0.05


def _decision(order, status, reason=""):
    return {"orderNo": order.order_no, "status": status, "reasons": [{"reason": reason}] if reason else []}


def test_books_find_undecided_conflicting_and_unexpected_decisions():
    orders = _orders(60)
    load = openloop.build(orders, rate=1000, duplicate_rate=0, seed=1)
    decisions = {}
    for o in orders:
        decisions[o.order_no] = [_decision(o, o.expected_status, o.expected_reason)]
    res = SimpleNamespace(decisions=decisions)
    assert openloop.books(load, res, exact=True)["ok"]
    ok = next(o for o in orders if o.expected_status == 800)
    bad = next(o for o in orders if o.expected_status == 100)
    decisions[ok.order_no] = [_decision(ok, 300)]  # review: fine under the full rule set, not match-only
    assert openloop.books(load, res, exact=False)["ok"]
    assert openloop.books(load, res, exact=True)["unexpected_outcomes"] == 1
    decisions[bad.order_no] = [_decision(bad, 800)]  # a reject released: never fine
    assert openloop.books(load, res, exact=False)["unexpected_outcomes"] == 1
    decisions[ok.order_no] = [_decision(ok, 800), {**_decision(ok, 100), "invtNo": "X"}]
    del decisions[orders[-1].order_no]
    b = openloop.books(load, res, exact=False)
    assert (b["conflicting_decisions"], b["undecided"], b["duplicate_decision_records"]) == (1, 1, 1)
    assert not b["ok"]


def test_backlog_growth_is_a_slope_not_a_level():
    steady = [{"t": t / 2, "in_flight_orders": 40 + (t % 3)} for t in range(40)]
    growing = [{"t": t / 2, "in_flight_orders": 40 + 30 * t} for t in range(40)]
    assert not backlog_growing(steady, 20, order_rate=500)
    assert backlog_growing(growing, 20, order_rate=500)


def _run(values_ms, offered=1000, held=True):
    h = HdrHistogram(1, openloop.HIST_MAX_US, 3)
    for v in values_ms:
        h.record_value(int(v * 1000))
    return {"offered_documents_per_s": offered, "achieved_documents_per_s": offered - 5, "held": held,
            "books": {"orders": 10, "decided": 10, "undecided": 0, "duplicate_decision_records": 0,
                      "conflicting_decisions": 0, "unexpected_outcomes": 0, "ok": True},
            "cpu_cores": {"worker1": 0.5, "tansu": 0.2}, "rss_mb_max": {"worker1": 200.0},
            "samples": [{"t": 0.5, "decided_documents_per_s": offered, "in_flight_orders": 3}],
            "workload": {"documents_per_record": 1, "format": "json", "mean_record_bytes": 900,
                         "scenarios": {"ok": 10}}, "_hist": h}


def test_repeated_runs_merge_histograms_and_the_report_is_written(tmp_path):
    doc = {"started": "now", "scenario": "steps", "command": "python -m benchmarks.throughput", "wall_seconds": 1,
           "machine": report.machine(workers=1, rules="default", match_timeout_s=5),
           "method": {"latency": "x", "warmup": "y", "mix": "realistic", "gap_ms": 20, "duplicates": 0.02},
           "configs": [{"config": "per-doc-json", "saturation": {"documents": 100, "documents_per_s": 2000},
                        "sustainable_documents_per_s": 1800,
                        "probes": [{"offered_documents_per_s": 1800, "held": True}],
                        "steps": [{"percent": 50, "runs": [_run([10] * 100), _run([20] * 99 + [500])]},
                                  {"percent": 100, "runs": [_run([40] * 100, 1800, held=False)]}]}]}
    report.write(tmp_path, doc)
    s = doc["configs"][0]["summary"]
    # merged counts, not averaged percentiles: 199 of 200 values ≤ 20 ms, the max is the one 500 ms value
    assert s[0]["latency_ms"]["p50"] == pytest.approx(10, rel=0.01)
    assert s[0]["latency_ms"]["p99"] == pytest.approx(20, rel=0.01)
    assert s[0]["latency_ms"]["max"] == pytest.approx(500, rel=0.01)
    assert s[0]["held"] and not s[1]["held"]
    names = {p.name for p in tmp_path.iterdir()} | {p.name for p in (tmp_path / "hist").iterdir()}
    assert {"result.json", "summary.md", "latency.png", "throughput.png", "per-doc-json-step050-run2.hdr",
            "per-doc-json-step050-merged.hdr"} <= names
    raw = HdrHistogram.decode((tmp_path / "hist" / "per-doc-json-step050-merged.hdr").read_bytes())
    assert raw.get_total_count() == 200
    md = (tmp_path / "summary.md").read_text()
    assert "| 50 % | 1,000 |" in md and "| 100 % | 1,800 |" in md and "no |" in md
    assert "_hist" not in (tmp_path / "result.json").read_text()
    assert json.loads((tmp_path / "result.json").read_text())["configs"][0]["sustainable_documents_per_s"] == 1800
