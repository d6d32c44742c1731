"""`clearance bench` end to end, tiny: a real worker on the embedded broker and
Redis, saturation, a probe and one step, and the results folder it leaves.
Timings are not asserted: only that the run measured something and the books hold."""
from __future__ import annotations

import json
import shutil

import pytest
from hdrh.histogram import HdrHistogram

from benchmarks import throughput

pytestmark = pytest.mark.integration


def test_bench_run_writes_results_and_keeps_the_books(services, tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP", services.kafka_bootstrap)
    monkeypatch.setenv("REDIS_URL", services.redis_url)
    folder = throughput.main(["--configs", "batch50-json", "--steps", "50", "--step-seconds", "4", "--probes", "1",
                              "--probe-seconds", "3", "--orders", "300", "--match-timeout", "3", "--rules", "spine",
                              "--out", str(tmp_path), "--label", "t"])
    doc = json.loads((folder / "result.json").read_text())
    cfg = doc["configs"][0]
    assert cfg["saturation"]["documents_per_s"] > 0 and cfg["saturation"]["books"]["ok"]
    assert cfg["sustainable_documents_per_s"] > 0
    (step,) = cfg["summary"]
    # every order, including those missing a document (match timeout), got exactly its expected decision
    assert step["books_ok"], cfg["steps"][0]["runs"][0]["books"]
    assert step["books"]["orders"] == step["books"]["decided"] > 0
    assert step["latency_ms"]["p50"] > 0 and step["latency_ms"]["max"] >= step["latency_ms"]["p99"]
    run = cfg["steps"][0]["runs"][0]
    assert run["samples"] and sum(n for k, n in run["workload"]["scenarios"].items() if k != "ok") > 0
    assert {"worker1", "generator"} <= set(run["cpu_s"])
    hist = HdrHistogram.decode((folder / "hist" / "batch50-json-step050-merged.hdr").read_bytes())
    assert hist.get_total_count() == run["latency_ms"]["count"] > 0
    assert (folder / "latency.png").stat().st_size > 0 and (folder / "throughput.png").stat().st_size > 0
    assert "| 50 % |" in (folder / "summary.md").read_text()


def test_redis_script_benchmark_completes_every_order_it_sends():
    # On a Redis of its own (the benchmark empties its database).
    import redis

    from benchmarks import redis_scripts
    from streams import embedded

    own = embedded.start("unused:1", "")
    try:
        r = redis.Redis.from_url(own.redis_url)
        us, completed = redis_scripts.match(r, 300)
        assert completed == 300  # the fourth call of each order found all four documents
        assert us > 0
        assert r.zcard("clr:p:{o00}") == 300  # pending (for the timeout sweep) until the decision is confirmed
        assert redis_scripts.observe(r, 200) > 0
        # Four counters per order; every buyer is new, so one buyer key per order.
        assert len(list(r.scan_iter("clr:f:{f00}:buyer:*", count=1000))) == 200
    finally:
        own.stop()


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_redis_instruction_count_covers_only_the_workload():
    from benchmarks import instructions, redis_scripts

    counted = instructions.CountedRedis()
    try:
        r = counted.client
        redis_scripts.observe(r, 100)  # warm-up
        small = instructions.measure(counted, lambda: redis_scripts.observe(r, 100) and 400)
        idle = counted.instructions()  # nothing ran since the last read
        per_doc_large = instructions.measure(counted, lambda: redis_scripts.observe(r, 300) and 1200)
        assert small > 0 and per_doc_large > 0
        # Counting is deterministic: the same work per document costs about the same.
        assert 0.8 < per_doc_large / small < 1.25
        assert idle < small * 400 / 10
    finally:
        counted.stop()
