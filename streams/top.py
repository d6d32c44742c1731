"""`clearance top`: a live terminal view of one or more workers' /metrics,
and of gate services' (`clearance gate`, told apart by clearance_gate_info).

Rates are differences between two scrapes; latency percentiles come from the
difference of the histogram buckets over the same interval (merged across
workers, never averaged), so the view shows what happened in the last second.
"""
from __future__ import annotations

import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Scrape:
    url: str
    at: float
    ok: bool
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def total(self, name: str, **match: str) -> float:
        return sum(v for (n, labels), v in self.samples.items()
                   if n == name and all(dict(labels).get(k) == want for k, want in match.items()))

    def max(self, name: str) -> float:
        """The largest value of the series (0 when there is none)."""
        return max((v for (n, _), v in self.samples.items() if n == name), default=0.0)

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (n, labels), v in self.samples.items():
            if n == name:
                out[dict(labels).get(label, "")] += v
        return out


def scrape(url: str, timeout: float = 2.0) -> Scrape:
    base = url.rstrip("/")
    target = base if base.endswith("/metrics") else base + "/metrics"
    try:
        text = urllib.request.urlopen(target, timeout=timeout).read().decode()
    except Exception:
        return Scrape(url, time.time(), False)
    s = Scrape(url, time.time(), True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            s.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return s


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """q-quantile from cumulative bucket counts (upper bound → count), linear within a bucket."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return prev_bound
            span = buckets[b] - prev_count
            return prev_bound + (b - prev_bound) * ((rank - prev_count) / span if span else 1.0)
        prev_bound, prev_count = b, buckets[b]
    return bounds[-1]


def _bucket_delta(before: Scrape, after: Scrape, name: str) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for (n, labels), v in after.samples.items():
        if n == name:
            le = float(dict(labels)["le"])
            out[le] += v - before.samples.get((n, labels), 0.0)
    return out


def _rates(before: Scrape, after: Scrape, name: str, label: str, dt: float) -> dict[str, float]:
    was = before.by(name, label)
    return {k: (v - was.get(k, 0.0)) / dt for k, v in after.by(name, label).items()}


def gate_failures(s: Scrape) -> float:
    """Gate API answers 5xx so far, every route."""
    return sum(v for code, v in s.by("clearance_gate_requests_total", "code").items() if code.startswith("5"))


def is_gate(s: Scrape) -> bool:
    return any(name == "clearance_gate_info" for name, _labels in s.samples)


def gate_row(b: Scrape, a: Scrape, dt: float) -> dict[str, Any]:
    """A gate service: what the gates asked and were told, and how far behind
    the release topic it is (released parcels scan "unknown" meanwhile)."""
    return {
        "gate": a.url, "up": True,
        "scans": _rates(b, a, "clearance_gate_scans_total", "answer", dt),
        "exits": _rates(b, a, "clearance_gate_exits_total", "result", dt),
        "failed": (gate_failures(a) - gate_failures(b)) / dt,
        "lag": a.total("clearance_gate_release_lag_records"),
        "lag_seconds": a.max("clearance_gate_release_lag_seconds"),
        "resent": a.total("clearance_gate_exit_events_resent_total") - b.total("clearance_gate_exit_events_resent_total"),
        # Since its consumer loop last turned, at the scrape (None: a gate service without the heartbeat).
        "loop_age": (max(a.at - a.total("clearance_gate_consumer_heartbeat_timestamp_seconds"), 0.0)
                     if ("clearance_gate_consumer_heartbeat_timestamp_seconds", ()) in a.samples else None),
        # Connections its API holds (kept-alive idle ones too), against CLEARANCE_GATE_MAX_CONNECTIONS.
        "connections": a.total("clearance_gate_connections"),
    }


def summarise(before: list[Scrape], after: list[Scrape]) -> dict[str, Any]:
    """One row per worker plus a total, one per gate service; rates per second
    over the interval."""
    rows = []
    gates = []
    merged: dict[float, float] = defaultdict(float)
    for b, a in zip(before, after):
        dt = max(a.at - b.at, 1e-3)
        if not (a.ok and b.ok):
            rows.append({"worker": a.url, "up": False})
            continue
        if is_gate(a):
            gates.append(gate_row(b, a, dt))
            continue
        docs = {t: (v - b.by("clearance_documents_consumed_total", "type").get(t, 0.0)) / dt
                for t, v in a.by("clearance_documents_consumed_total", "type").items()}
        decisions = {s: (v - b.by("clearance_decisions_total", "status").get(s, 0.0)) / dt
                     for s, v in a.by("clearance_decisions_total", "status").items()}
        buckets = _bucket_delta(b, a, "clearance_decision_latency_seconds_bucket")
        for le, v in buckets.items():
            merged[le] += v
        rows.append({
            "worker": a.url, "up": True, "docs": docs, "decisions": decisions,
            "p50": quantile(buckets, 0.5), "p99": quantile(buckets, 0.99),
            "lag": a.total("clearance_consumer_lag_records"),
            # Its partition furthest behind, in seconds (what ClearanceConsumerBehind watches).
            "lag_seconds": a.max("clearance_consumer_lag_seconds"),
            "pending": a.total("clearance_pending_matches"),
            "errors": (a.total("clearance_errors_total") - b.total("clearance_errors_total")) / dt,
            "ruleset": ",".join(sorted(a.by("clearance_ruleset_info", "version"))),
            # Deciding nothing since Redis lost data (CLEARANCE_REDIS_LOSS=halt), until `clearance resume`.
            "halted": a.total("clearance_worker_halted") > 0,
        })
    return {"rows": rows, "gates": gates, "p50": quantile(merged, 0.5), "p99": quantile(merged, 0.99)}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.1f} ms"


def render(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="clearance workers", caption=f"all workers: p50 {_ms(summary['p50'])}  "
                                                     f"p99 {_ms(summary['p99'])}")
    for col in ("worker", "docs/s 311/411/511/621", "decisions/s 800/300/500/100", "p50", "p99", "lag",
                "behind (s)", "pending", "errors/s", "rule set"):
        table.add_column(col, justify="left" if col in ("worker", "rule set") else "right", no_wrap=col == "worker")
    for r in summary["rows"]:
        if not r["up"]:
            table.add_row(r["worker"], "[red]down[/red]", *[""] * 8)
            continue
        docs = "/".join(f"{r['docs'].get(t, 0):.0f}" for t in ("311", "411", "511", "621"))
        dec = "/".join(f"{r['decisions'].get(s, 0):.0f}" for s in ("800", "300", "500", "100"))
        name = r["worker"] + (" [red]halted[/red]" if r.get("halted") else "")
        table.add_row(name, docs, dec, _ms(r["p50"]), _ms(r["p99"]), f"{r['lag']:.0f}",
                      f"{r['lag_seconds']:.0f}", f"{r['pending']:.0f}", f"{r['errors']:.1f}", r["ruleset"])
    if not summary.get("gates"):
        return table
    from rich.console import Group

    gates = Table(title="clearance gates")
    for col in ("gate service", "scans/s release/hold/unknown", "exits/s exited/already/refused", "5xx/s",
                "behind (records)", "behind (s)", "events resent", "loop turned (s ago)", "conns"):
        # The address whole on one line, however narrow the terminal: the other columns wrap.
        gates.add_column(col, justify="left" if col == "gate service" else "right", no_wrap=col == "gate service")
    for g in summary["gates"]:
        scans = "/".join(f"{g['scans'].get(a, 0):.0f}" for a in ("release", "hold", "unknown"))
        exits = "/".join(f"{g['exits'].get(r, 0):.0f}" for r in ("exited", "already_exited", "refused"))
        age = "-" if g["loop_age"] is None else f"{g['loop_age']:.0f}"
        gates.add_row(g["gate"], scans, exits, f"{g['failed']:.1f}", f"{g['lag']:.0f}", f"{g['lag_seconds']:.0f}",
                      f"{g['resent']:.0f}", age, f"{g['connections']:.0f}")
    return Group(table, gates) if summary["rows"] else gates


def run_top(urls: list[str], interval: float = 1.0, once: bool = False) -> None:
    from rich.console import Console
    from rich.live import Live

    before = [scrape(u) for u in urls]
    if once:
        time.sleep(interval)
        Console(width=160).print(render(summarise(before, [scrape(u) for u in urls])))
        return
    with Live(render(summarise(before, before)), refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                after = [scrape(u) for u in urls]
                live.update(render(summarise(before, after)))
                before = after
        except KeyboardInterrupt:
            pass
