"""Open-loop load: a workload on a schedule, and the measurement of one step.

The workload is realistic CEB traffic from the simulator: four documents per
order (or three, for the peers' job) sent in a shuffled order with a gap
between the documents of one order, a share of exact duplicates, orders with a
missing document (decided by the match timeout) and rule hits, as per-document
records or as CEB messages of up to 100 documents.

Every send has an intended time. The sender keeps to the schedule; when it
falls behind it sends at once, and latency is still measured from the
*intended* time of the completing document, so a stall cannot hide its
victims (coordinated omission). Latency = intended send of the document that
completes the order → the decision read back by this process's consumer.
"""
from __future__ import annotations

import bisect
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
from hdrh.histogram import HdrHistogram

from streams.simulator import EXPECTED, SCENARIOS, GeneratedOrder, to_dxp, to_json, to_xml

ORDER_TYPES = ("311", "411", "511", "621")
CLEAN = {"ok": 1.0}
REALISTIC = SCENARIOS  # 80 % clean; mismatches, buyer ≠ payer, over limit, missing payment/waybill
HIST_MAX_US = 3_600_000_000  # one hour


@dataclass
class Send:
    t: float  # intended offset from the step's start, seconds
    doc_type: str
    key: bytes
    value: bytes
    docs: int
    duplicate: bool = False


@dataclass
class Workload:
    sends: list[Send]
    # orderNo -> intended offset of the send that completes it (orders that can complete)
    completes: dict[str, float]
    orders: dict[str, GeneratedOrder]
    docs_of: dict[str, int]  # orderNo -> documents of the order (first copies)
    documents: int  # all documents sent, duplicates included
    duplicates: int
    per_record: int
    fmt: str
    gap_s: float

    @property
    def seconds(self) -> float:
        return self.sends[-1].t if self.sends else 0.0

    def describe(self) -> dict[str, Any]:
        scen: dict[str, int] = {}
        for o in self.orders.values():
            scen[o.scenario] = scen.get(o.scenario, 0) + 1
        sizes = [len(s.value) for s in self.sends]
        return {"orders": len(self.orders), "documents": self.documents, "records": len(self.sends),
                "documents_per_record": self.per_record, "format": self.fmt, "duplicate_documents": self.duplicates,
                "gap_between_documents_ms": round(self.gap_s * 1000, 1), "scenarios": scen,
                "mean_record_bytes": round(sum(sizes) / len(sizes)) if sizes else 0,
                "arrival": "document types of an order (or of a 100-order batch) in a random permutation"}


def build(orders: list[GeneratedOrder], rate: float, per_record: int = 1, fmt: str = "json", gap_s: float = 0.02,
          duplicate_rate: float = 0.02, seed: int = 1, types: tuple[str, ...] = ORDER_TYPES) -> Workload:
    """Schedule `orders` at `rate` documents/s (duplicates included)."""
    rng = random.Random(seed)
    enc = {"xml": to_xml, "dxp": to_dxp}.get(fmt, to_json)
    sends: list[Send] = []
    completes: dict[str, float] = {}
    docs_of: dict[str, int] = {}
    cursor = 0  # documents scheduled so far: sets the pace
    dups = 0
    if per_record <= 1:
        for o in orders:
            present = [t for t in types if t in o.docs]
            rng.shuffle(present)
            start = cursor / rate
            for k, t in enumerate(present):
                sends.append(Send(start + k * gap_s, t, o.order_no.encode(), enc(t, [o.docs[t]]), 1))
            cursor += len(present)
            docs_of[o.order_no] = len(present)
            if len(present) == len(types):
                completes[o.order_no] = start + (len(present) - 1) * gap_s
            if duplicate_rate and rng.random() < duplicate_rate * len(present):
                t = rng.choice(present)
                sends.append(Send(start + len(present) * gap_s + rng.random() * 0.05, t, o.order_no.encode(),
                                  enc(t, [o.docs[t]]), 1, duplicate=True))
                cursor += 1
                dups += 1
    else:
        for i in range(0, len(orders), per_record):
            chunk = orders[i:i + per_record]
            order_types = list(types)
            rng.shuffle(order_types)
            last = 0.0
            for t in order_types:
                docs = [o.docs[t] for o in chunk if t in o.docs]
                if not docs:
                    continue
                last = cursor / rate
                value = enc(t, docs)
                sends.append(Send(last, t, chunk[0].order_no.encode(), value, len(docs)))
                cursor += len(docs)
                # Whole records re-sent: what a platform's retry after a lost acknowledgement looks like.
                if duplicate_rate and rng.random() < duplicate_rate:
                    sends.append(Send(last + gap_s, t, chunk[0].order_no.encode(), value, len(docs), duplicate=True))
                    cursor += len(docs)
                    dups += len(docs)
            for o in chunk:
                present = [t for t in types if t in o.docs]
                docs_of[o.order_no] = len(present)
                if len(present) == len(types):
                    completes[o.order_no] = last
    sends.sort(key=lambda s: s.t)
    return Workload(sends, completes, {o.order_no: o for o in orders}, docs_of, cursor, dups, per_record, fmt,
                    gap_s)


def outcome_ok(order: GeneratedOrder, decision: dict[str, Any], exact: bool) -> bool:
    """The expected decision. With the match-only rules the status is exact; with the
    full rule set a clean order may also go to review or inspection (risk rules,
    random selection), but a reject stays a reject for the reason injected."""
    status = decision.get("status")
    if order.expected_status == 100:
        codes = {r.get("reason") for r in decision.get("reasons", [])} | {r.get("code") for r in
                                                                          decision.get("reasons", [])}
        return status == 100 and (not order.expected_reason or order.expected_reason in codes or
                                  EXPECTED.get(order.scenario, (0, ""))[1] in codes)
    return status == order.expected_status if exact else status != 100


def cpu_seconds(pid: int) -> float:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Target:
    """Where the load goes and how decisions come back."""
    producer: Any  # confluent_kafka.Producer
    consumer: Any  # confluent_kafka.Consumer, assigned to the decision topic at its end
    topics: dict[str, str]  # doc type -> topic
    order_no: Callable[[dict[str, Any]], str] = lambda d: str(d.get("orderNo", ""))
    decision_id: Callable[[dict[str, Any]], str] = lambda d: str(d.get("decisionId") or d.get("orderNo", ""))
    pids: dict[str, int] = field(default_factory=dict)  # process name -> pid, for CPU and RSS
    backlog: Callable[[], float | None] = lambda: None  # e.g. the workers' consumer lag in records
    consumed: Callable[[], float | None] = lambda: None  # documents the system has consumed so far


@dataclass
class StepResult:
    offered_documents_per_s: float
    achieved_documents_per_s: float
    sent_documents: int
    histogram: HdrHistogram
    samples: list[dict[str, float]]  # time series: t, sent, decided docs/s, in-flight orders, lag
    decisions: dict[str, list[dict[str, Any]]]  # orderNo -> decision records seen
    decided_at: dict[str, float]  # orderNo -> first decision read, seconds from the start
    cpu_s: dict[str, float]
    rss_mb: dict[str, float]
    send_seconds: float
    drain_seconds: float
    generator_late_max_s: float
    # Where the latency goes, from the decision's own timestamps (same host clock):
    # send = record timestamp − intended send; queue = batch start − record timestamp
    # (broker, fetch, waiting for the worker); process = decided − batch start;
    # emit = read back − decided (produce, acknowledgement, the benchmark's fetch).
    stages: dict[str, HdrHistogram] = field(default_factory=dict)

    def latency_ms(self) -> dict[str, float]:
        out = percentiles_ms(self.histogram)
        if out:
            out["count"] = self.histogram.get_total_count()
        return out

    def stages_ms(self) -> dict[str, dict[str, float]]:
        return {name: percentiles_ms(h, STAGE_PCTS) for name, h in self.stages.items() if h.get_total_count()}


LATENCY_PCTS = (50, 90, 99, 99.9, 99.99)
STAGE_PCTS = (50, 99)


def percentiles_ms(h: HdrHistogram, pcts: tuple[float, ...] = LATENCY_PCTS) -> dict[str, float]:
    """Percentiles of a µs histogram in ms ({} when empty); with the max for the full set."""
    if h.get_total_count() == 0:
        return {}
    out = {f"p{p:g}": round(h.get_value_at_percentile(p) / 1000, 2) for p in pcts}
    if pcts == LATENCY_PCTS:
        out["max"] = round(h.get_max_value() / 1000, 2)
    return out


def run(target: Target, load: Workload, rate: float, warmup_s: float = 0.0, drain_s: float = 60.0,
        tick: Callable[[float, dict[str, float]], None] | None = None, sample_every: float = 0.5) -> StepResult:
    """Send `load` on its schedule, read decisions, return the measurements."""
    hist = HdrHistogram(1, HIST_MAX_US, 3)
    stages = {name: HdrHistogram(1, HIST_MAX_US, 2) for name in STAGES}
    due_offsets = sorted(load.completes.values())
    decisions: dict[str, list[dict[str, Any]]] = {}
    decided_at: dict[str, float] = {}
    decided_complete = 0
    decided_docs = 0
    progress = {"sent": 0, "late": 0.0, "done": False}
    cpu0 = {n: cpu_seconds(p) for n, p in target.pids.items()}
    rss = {n: 0.0 for n in target.pids}
    t0 = time.time() + 0.2

    def sender() -> None:
        prod = target.producer
        for i, s in enumerate(load.sends):
            wait = t0 + s.t - time.time()
            if wait > 0.0005:
                time.sleep(wait)
            elif wait < 0:
                progress["late"] = max(progress["late"], -wait)
            while True:
                try:
                    prod.produce(target.topics[s.doc_type], s.value, s.key)
                    break
                except BufferError:
                    prod.poll(0.005)
            progress["sent"] += s.docs
            if i % 64 == 0:
                prod.poll(0)
        prod.flush(120)
        progress["done"] = time.time() - t0

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    samples: list[dict[str, float]] = []
    next_sample = t0
    last_docs = 0
    sent_end: float | None = None
    deadline: float | None = None
    cpu_end: dict[str, float] = {}
    while True:
        # consume() waits for its whole timeout when fewer records are there: keep it short,
        # it is part of the measured latency.
        msgs = target.consumer.consume(1000, 0.005)
        now = time.time()
        for m in msgs:
            if m.error():
                continue
            d = orjson.loads(m.value())
            no = target.order_no(d)
            if no not in load.orders:
                continue  # an earlier step's late decision
            seen = decisions.setdefault(no, [])
            seen.append(d)
            if len(seen) > 1:
                continue
            decided_at[no] = now - t0
            decided_docs += load.docs_of.get(no, 0)
            off = load.completes.get(no)
            if off is not None:
                decided_complete += 1
                if off >= warmup_s:
                    hist.record_value(max(1, int((now - t0 - off) * 1e6)))
                    _record_stages(stages, d.get("timestamps") or {}, t0 + off, now)
        if now >= next_sample:
            for n, p in target.pids.items():
                rss[n] = max(rss[n], rss_mb(p))
            el = now - t0
            due = bisect.bisect_right(due_offsets, el)
            s = {"t": round(el, 2), "sent_documents": progress["sent"],
                 "decided_documents_per_s": round((decided_docs - last_docs) / sample_every) if samples else 0,
                 "in_flight_orders": max(0, due - decided_complete)}
            lag = target.backlog()
            if lag is not None:
                s["lag_records"] = lag
            consumed = target.consumed()
            if consumed is not None:
                s["consumed_documents"] = consumed
            samples.append(s)
            last_docs = decided_docs
            next_sample = now + sample_every
            if tick:
                tick(el, s)
        if progress["done"] and sent_end is None:
            sent_end = t0 + float(progress["done"])
            cpu_end = {n: cpu_seconds(p) for n, p in target.pids.items()}
            window_docs = decided_docs
            deadline = now + drain_s
        if sent_end is not None and (len(decisions) >= len(load.orders) or now > (deadline or now)):
            break
    thread.join()
    send_s = (sent_end or time.time()) - t0
    achieved = _achieved(samples, send_s, warmup_s) if target.consumed() is not None else None
    if achieved is None:  # decided documents over the send window: slightly low, latency is inside it
        achieved = window_docs / send_s if send_s > 0 else 0.0
    return StepResult(rate, achieved, progress["sent"], hist, samples, decisions, decided_at,
                      {n: round(cpu_end.get(n, 0) - cpu0[n], 2) for n in target.pids},
                      {n: round(v, 1) for n, v in rss.items()}, round(send_s, 2),
                      round(time.time() - (sent_end or time.time()), 2), round(progress["late"], 3), stages)


STAGES = ("send", "queue", "process", "emit")


def _record_stages(stages: dict[str, HdrHistogram], ts: dict[str, Any], intended: float, received: float) -> None:
    rec, start, decided = ts.get("completingRecord"), ts.get("completingDocument"), ts.get("decided")
    if not (rec and start and decided):
        return  # a timeout decision has no completing document
    marks = (intended * 1000, rec, start, decided, received * 1000)
    for name, a, b in zip(STAGES, marks, marks[1:]):
        stages[name].record_value(max(1, int((b - a) * 1000)))


def _achieved(samples: list[dict[str, float]], send_s: float, warmup_s: float) -> float | None:
    """Consumption rate between the end of the warm-up and the end of sending, from
    the system's own document counter: in a steady state it equals the offered rate."""
    window = [s for s in samples if "consumed_documents" in s and warmup_s <= s["t"] <= send_s + 0.01]
    if len(window) < 2 or window[-1]["t"] <= window[0]["t"]:
        return None
    return (window[-1]["consumed_documents"] - window[0]["consumed_documents"]) / (window[-1]["t"] - window[0]["t"])


def books(load: Workload, result: StepResult, exact: bool) -> dict[str, Any]:
    """Every order exactly one decision, and the expected one."""
    undecided = [no for no in load.orders if no not in result.decisions]
    conflicting = [no for no, ds in result.decisions.items()
                   if len({(d.get("status"), d.get("invtNo")) for d in ds}) > 1]
    wrong = [no for no, ds in result.decisions.items() if not outcome_ok(load.orders[no], ds[0], exact)]
    return {"orders": len(load.orders), "decided": len(result.decisions), "undecided": len(undecided),
            "duplicate_decision_records": sum(len(ds) - 1 for ds in result.decisions.values()),
            "conflicting_decisions": len(conflicting), "unexpected_outcomes": len(wrong),
            "examples": {"undecided": undecided[:3], "unexpected": [
                {"orderNo": no, "scenario": load.orders[no].scenario, "status": result.decisions[no][0].get("status"),
                 "rules": result.decisions[no][0].get("rules")} for no in wrong[:3]]},
            "ok": not undecided and not conflicting and not wrong}
