"""Alert rules and dashboard: promtool checks and unit tests, dashboard in sync, top's arithmetic."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from streams.top import Scrape, quantile, summarise
from tests.conftest import ROOT

PROM = ROOT / "ops" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: `make test` installs Debian's prometheus package")
    return subprocess.run([exe, *args], cwd=PROM, capture_output=True, text=True, timeout=60)


def test_alert_rules_are_valid():
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    import yaml

    rules = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    assert len(rules) == 31 and f"{len(rules)} rules found" in r.stdout + r.stderr


def test_alert_rule_unit_tests_pass():
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_example_prometheus_config_is_valid():
    r = promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_has_a_runbook_section():
    import yaml

    alerts = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"][0]["rules"]
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for rule in alerts:
        anchor = rule["annotations"]["runbook_url"].split("#")[1]
        assert f"### {rule['alert']}" in runbook and anchor == rule["alert"].lower()


def test_dashboard_json_is_what_the_builder_writes():
    sys.path.insert(0, str(ROOT / "ops" / "grafana"))
    import build_dashboard

    committed = json.loads((ROOT / "ops" / "grafana" / "clearance.json").read_text())
    assert committed == json.loads(json.dumps(build_dashboard.build()))


def test_quantile_from_cumulative_buckets():
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.01)
    assert quantile(buckets, 0.95) == pytest.approx(0.55)
    assert quantile({float("inf"): 0.0}, 0.5) is None


def test_summary_rates_and_merged_latency():
    def s(at, docs, dec, b1, b2):
        sc = Scrape("w", at, True)
        sc.samples[("clearance_documents_consumed_total", (("format", "json"), ("type", "311")))] = docs
        sc.samples[("clearance_decisions_total", (("lane", "green"), ("outcome", "release"), ("status", "800")))] = dec
        sc.samples[("clearance_decision_latency_seconds_bucket", (("le", "0.01"),))] = b1
        sc.samples[("clearance_decision_latency_seconds_bucket", (("le", "+Inf"),))] = b2
        return sc

    out = summarise([s(0, 100, 10, 5, 10)], [s(2, 300, 50, 25, 50)])
    row = out["rows"][0]
    assert row["docs"]["311"] == 100 and row["decisions"]["800"] == 20
    assert row["lag_seconds"] == 0.0  # no lag series yet
    later = s(4, 300, 50, 25, 50)
    for topic, part, seconds in (("ceb.import.order", "0", 3.0), ("ceb.import.order", "1", 130.0),
                                 ("ceb.import.waybill", "1", 7.0)):
        later.samples[("clearance_consumer_lag_seconds", (("partition", part), ("topic", topic)))] = seconds
    assert summarise([s(2, 300, 50, 25, 50)], [later])["rows"][0]["lag_seconds"] == 130.0  # the furthest behind
    assert out["p50"] is not None and out["p50"] <= 0.01
    assert not row["halted"]


def test_a_halted_worker_says_so_in_top():
    from rich.console import Console

    from streams.top import render

    def s(at, halted):
        sc = Scrape("http://w1:6066", at, True)
        sc.samples[("clearance_worker_halted", ())] = halted
        return sc

    out = summarise([s(0, 1)], [s(1, 1)])
    assert out["rows"][0]["halted"]
    console = Console(width=200, record=True)
    console.print(render(out))
    assert "http://w1:6066 halted" in console.export_text()
    assert not summarise([s(1, 1)], [s(2, 0)])["rows"][0]["halted"]


def test_a_gate_service_is_summarised_apart_from_the_workers():
    from rich.console import Console

    from streams.top import render

    def g(at, release, unknown, exited, failed, lag, resent, beat=None):
        sc = Scrape("gate", at, True)
        sc.samples[("clearance_gate_info", (("group", "clearance-gate"), ("version", "0.1.0")))] = 1
        sc.samples[("clearance_gate_scans_total", (("answer", "release"),))] = release
        sc.samples[("clearance_gate_scans_total", (("answer", "unknown"),))] = unknown
        sc.samples[("clearance_gate_exits_total", (("result", "exited"),))] = exited
        sc.samples[("clearance_gate_requests_total", (("code", "200"), ("route", "scan")))] = release + unknown
        sc.samples[("clearance_gate_requests_total", (("code", "503"), ("route", "scan")))] = failed
        sc.samples[("clearance_gate_requests_total", (("code", "503"), ("route", "exit")))] = failed
        for part, seconds in (("0", 0.0), ("1", lag)):
            sc.samples[("clearance_gate_release_lag_records", (("partition", part),))] = 3 if seconds else 0
            sc.samples[("clearance_gate_release_lag_seconds", (("partition", part),))] = seconds
        sc.samples[("clearance_gate_exit_events_resent_total", ())] = resent
        if beat is not None:
            sc.samples[("clearance_gate_consumer_heartbeat_timestamp_seconds", ())] = beat
        sc.samples[("clearance_gate_connections", ())] = 5 + at
        return sc

    out = summarise([g(0, 10, 2, 4, 0, 0.0, 1, beat=0)], [g(2, 30, 6, 10, 3, 42.0, 4, beat=1.25)])
    assert out["rows"] == []
    (row,) = out["gates"]
    assert row["scans"] == {"release": 10, "unknown": 2} and row["exits"] == {"exited": 3}
    assert row["failed"] == 3  # 6 answers of 5xx over 2 s, on any route
    assert row["lag"] == 3 and row["lag_seconds"] == 42.0 and row["resent"] == 3
    assert row["loop_age"] == 0.75  # scraped at 2 s, its loop last turned at 1.25 s
    assert row["connections"] == 7  # open at the last scrape
    console = Console(width=200, record=True)
    console.print(render(out))
    text = console.export_text()
    assert "loop turned" in text and "conns" in text
    # A gate service of a version without the heartbeat: shown as unknown, not as 0.
    assert summarise([g(0, 10, 2, 4, 0, 0.0, 1)], [g(2, 30, 6, 10, 3, 42.0, 4)])["gates"][0]["loop_age"] is None


def test_local_watermark_is_the_slowest_lagging_partition():
    """Pure: how far a worker has read, from highwaters and processed offsets."""
    import time
    from types import SimpleNamespace

    from streams.app import local_watermark

    class TP(SimpleNamespace):
        def __hash__(self):
            return hash((self.topic, self.partition))

    parts = {TP(topic="o", partition=0): 100, TP(topic="o", partition=1): 50, TP(topic="p", partition=0): 0,
             TP(topic="internal", partition=0): 9}

    consumer = SimpleNamespace(assignment=lambda: list(parts), highwater=lambda tp: parts[tp], _committed_offset={})
    p = SimpleNamespace(next_offset={("o", 0): 100, ("o", 1): 40}, last_record_ms={("o", 0): 5_000, ("o", 1): 7_000})
    # o/0 caught up (counts as now), p/0 empty, o/1 ten records behind: its newest record read
    assert local_watermark(consumer, p, {"o", "p"}) == 7_000
    p.next_offset[("o", 1)] = 50
    assert abs(local_watermark(consumer, p, {"o", "p"}) - time.time() * 1000) < 5_000  # all caught up: now
    # a lagging partition nothing has been read from yet holds everything
    parts[TP(topic="p", partition=0)] = 3
    assert local_watermark(consumer, p, {"o", "p"}) == 0


def test_hiredis_packing_sends_the_same_bytes_as_redis_py():
    from redis.asyncio.connection import Connection

    from streams import state

    packed = type("P", (state._PackedByHiredis, Connection), {})()
    plain = Connection()
    for args in [("EVALSHA", "f" * 40, 2, "clr:o:{o01}:HN1", "clr:p:{o01}", 1764000000000, b"\x00\xff{}", "中文"),
                 ("CONFIG GET", "maxmemory"), (b"HSET", "k", "f", 12, 3.5), ("PING",)]:
        assert b"".join(packed.pack_command(*args)) == b"".join(plain.pack_command(*args)), args


def test_worker_client_packs_with_hiredis_for_every_url_scheme():
    from streams import state

    for url in ("redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///tmp/redis.sock"):
        cls = state.async_client(url).connection_pool.connection_class
        assert issubclass(cls, state._PackedByHiredis), url


def test_batches_are_cut_by_bytes_keeping_order_and_every_record():
    from streams.app import by_size
    from streams.pipeline import InRecord

    recs = [InRecord("t", 0, i, b"k", b"x" * n, 0) for i, n in enumerate([100, 300, 700, 50, 2000, 10])]
    chunks = by_size(recs, 1000)
    assert [[r.offset for r in c] for c in chunks] == [[0, 1], [2, 3], [4], [5]]  # an oversize record goes alone
    assert by_size([], 1000) == []
    assert [len(c) for c in by_size(recs, 10**9)] == [6]


def test_redis_memory_is_read_from_either_reply_form():
    from streams.state import memory_of

    assert memory_of({"used_memory": 1048576, "maxmemory": 0}) == (1048576, 0)
    assert memory_of({b"used_memory": b"2048", b"maxmemory": b"4096"}) == (2048, 4096)
    assert memory_of({}) == (0, 0)


def test_bearer_tokens_match_exactly_whatever_the_header_holds():
    from streams.auth import bearer_ok

    assert bearer_ok("Bearer s3cret", "s3cret")
    for header in (None, "", "s3cret", "Bearer s3cre", "Bearer s3cret ", "bearer s3cret", "Bearer s3cretX",
                   "Bearer 秘密", "Bearer s3cr\udcff"):
        assert not bearer_ok(header, "s3cret"), header
    assert bearer_ok("Bearer 秘密", "秘密")  # any character, compared as bytes


def test_a_gate_token_names_its_gate_and_the_list_is_read_strictly():
    from streams.auth import bearer_gate, gate_tokens, token_digests

    tokens = gate_tokens(" YP-01=one==, YP-02 = two ,")  # spaces around entries, a token with '=', a trailing comma
    assert tokens == {"one==": "YP-01", "two": "YP-02"}
    digests = token_digests(tokens)
    assert bearer_gate("Bearer two", digests) == "YP-02" and bearer_gate("Bearer one==", digests) == "YP-01"
    for header in (None, "", "Bearer one", "Bearer YP-01", "two", "bearer two", "Bearer two ", "Bearer  two"):
        assert bearer_gate(header, digests) is None, header
    assert bearer_gate("Bearer 秘密", token_digests({"秘密": "YP-03"})) == "YP-03"  # any character
    assert gate_tokens("") == {} and bearer_gate("Bearer x", {}) is None
