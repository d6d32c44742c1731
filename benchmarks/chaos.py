"""Fault injection under steady load, then a check of the books.

Each scenario starts the embedded broker, a Redis with an append-only file
(fsync always), two workers and a load generator; injects one fault; stops the
load; waits for every order to be decided; and checks:

* every order got exactly one decision (duplicate decision records on the
  topic are counted: same id, same content — idempotent in effect);
* the decision is the expected one (a reject stays a reject, a release a release);
* each released parcel becomes releasable at a gate once, however often its
  release event is replayed;
* each buyer's quota ledger equals the dutiable price of their orders that
  hold quota (every buyer here has one order);
* nothing unaccounted for: no order is left without a decision.

Usage: python -m benchmarks.chaos [--scenarios all|worker_kill,redis_stall,...] [--rate 60] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import orjson

from config.settings import Settings, load_settings
from streams import embedded, state
from streams.gate import Gate
from streams.simulator import Publisher, generate
from topics import registry

ROOT = Path(__file__).resolve().parent.parent
MIX = {"ok": 0.85, "amount_mismatch": 0.05, "buyer_not_payer": 0.05, "missing_payment": 0.05}


class Cluster:
    def __init__(self, workers: int = 2, match_timeout: float = 6.0, env: dict[str, str] | None = None,
                 sentinel: bool = False):
        self.dir = tempfile.mkdtemp(prefix="chaos-")
        self.kafka, self.tansu = embedded.start_kafka(self.dir)
        # With `sentinel`: a primary, its replica and three Sentinels instead of one Redis with its AOF.
        self.sentinel = embedded.LocalSentinel(os.path.join(self.dir, "sentinel")) if sentinel else None
        self.redis_port = embedded.free_port()
        self.redis_dir = os.path.join(self.dir, "redis")
        os.makedirs(self.redis_dir)
        self.redis_proc = self.start_redis()
        redis_env = self.sentinel.env() if self.sentinel else {"REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0"}
        self.settings = Settings(kafka_bootstrap=self.kafka, redis_url=redis_env["REDIS_URL"],
                                 redis_sentinels=redis_env.get("REDIS_SENTINELS", ""),
                                 redis_sentinel_master=redis_env.get("REDIS_SENTINEL_MASTER", "mymaster"),
                                 match_timeout_s=match_timeout,
                                 # the workers' (they inherit the environment): the books are read there
                                 redis_namespace=load_settings().redis_namespace)
        registry.ensure_topics(self.settings)
        self.env = dict(os.environ, KAFKA_BOOTSTRAP=self.kafka, **redis_env,
                        CLEARANCE_MATCH_TIMEOUT_S=str(match_timeout), CLEARANCE_SESSION_TIMEOUT_S="6",
                        CLEARANCE_RULES="spine", CLEARANCE_GROUP="chaos", **embedded.dev_pii_env(),
                        **(env or {}))
        self.workers: list[tuple[subprocess.Popen[bytes], int]] = []
        for _ in range(workers):
            self.start_worker()

    def start_redis(self, fresh: bool = False) -> subprocess.Popen[bytes]:
        if fresh:
            shutil.rmtree(self.redis_dir, ignore_errors=True)
            os.makedirs(self.redis_dir)
        proc = subprocess.Popen([embedded.redis_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                 "--dir", self.redis_dir, "--appendonly", "yes", "--appendfsync", "always",
                                 "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        embedded._wait_port(self.redis_port, proc, "redis-server")
        return proc

    def start_worker(self, index: int | None = None) -> None:
        port = embedded.free_port()
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-port", str(port),
                                 "--loglevel", "warn"], env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        if index is None:
            self.workers.append((proc, port))
        else:
            self.workers[index] = (proc, port)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        total = self.settings.partitions * len(registry.INBOUND)
        while time.monotonic() < deadline:
            held = 0
            for proc, port in self.workers:
                try:
                    held += orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                                                timeout=1).read())["assigned"]
                except Exception:
                    pass
            if held == total:
                return
            time.sleep(0.3)
        raise TimeoutError("workers did not take all partitions")

    def metric_sum(self, name: str) -> float:
        total = 0.0
        for proc, port in self.workers:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except Exception:
                continue
            total += sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))
        return total

    def stop(self) -> None:
        for proc, _ in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for proc in (self.redis_proc, self.tansu):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self.sentinel:
            self.sentinel.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig) if sig != signal.SIGSTOP and sig != signal.SIGCONT else proc.send_signal(sig)


# name -> (description, inject(cluster) at t=fault_at, recover(cluster) at t=fault_at+outage)
SCENARIOS: dict[str, tuple[str, Callable[[Cluster], None], Callable[[Cluster], None]]] = {
    "worker_kill": ("kill -9 of a worker mid-batch; the other takes its partitions; restart",
                    lambda c: _signal(c.workers[0][0], signal.SIGKILL), lambda c: c.start_worker(0)),
    "redis_stall": ("Redis frozen (SIGSTOP), then resumed: workers stall and fail closed",
                    lambda c: c.redis_proc.send_signal(signal.SIGSTOP),
                    lambda c: c.redis_proc.send_signal(signal.SIGCONT)),
    "redis_restart": ("Redis killed (-9) and restarted from its append-only file",
                      lambda c: (c.redis_proc.kill(), c.redis_proc.wait()),
                      lambda c: setattr(c, "redis_proc", c.start_redis())),
    "redis_restart_empty": ("Redis killed (-9) and restarted WITHOUT its data",
                            lambda c: (c.redis_proc.kill(), c.redis_proc.wait()),
                            lambda c: setattr(c, "redis_proc", c.start_redis(fresh=True))),
    "broker_stall": ("broker frozen (SIGSTOP), then resumed: connections time out and reconnect",
                     lambda c: c.tansu.send_signal(signal.SIGSTOP), lambda c: c.tansu.send_signal(signal.SIGCONT)),
    "producer_errors": ("broker frozen longer than the output producer's 2 s delivery timeout: deliveries fail "
                        "and are re-sent", lambda c: c.tansu.send_signal(signal.SIGSTOP),
                        lambda c: c.tansu.send_signal(signal.SIGCONT)),
}
_FAILOVER = ("Redis primary killed (-9) under Sentinel: its replica promoted (2 s to notice), the dead node "
             "restarted as a replica", lambda c: c.sentinel.kill_primary(),
             lambda c: (c.sentinel.wait_promoted(), c.sentinel.restart_killed()))
SCENARIOS["redis_failover"] = _FAILOVER
SCENARIOS["redis_failover_wait"] = (_FAILOVER[0] + ", each batch waiting for the replica "
                                    "(CLEARANCE_REDIS_WAIT_REPLICAS=1)", *_FAILOVER[1:])
SCENARIO_ENV = {"producer_errors": {"CLEARANCE_PRODUCE_TIMEOUT_MS": "2000"},
                "redis_failover_wait": {"CLEARANCE_REDIS_WAIT_REPLICAS": "1", "CLEARANCE_REDIS_WAIT_MS": "1000"}}
SENTINEL_SCENARIOS = {"redis_failover", "redis_failover_wait"}


def run_scenario(name: str, rate: float = 60, duration: float = 16, fault_at: float = 5, outage: float = 5,
                 seed: int = 1) -> dict[str, Any]:
    description, inject, recover = SCENARIOS[name]
    cluster = Cluster(env=SCENARIO_ENV.get(name), sentinel=name in SENTINEL_SCENARIOS)
    try:
        cluster.wait_ready()
        orders = list(generate(int(rate * duration), seed=seed, prefix=f"C{name[:3].upper()}", mix=MIX))
        pub = Publisher(cluster.settings, "json", batch=1, duplicate_rate=0.05)
        start = time.monotonic()
        events: dict[str, float] = {}

        def faults() -> None:
            time.sleep(fault_at)
            events["injected"] = time.time()
            inject(cluster)
            time.sleep(outage)
            recover(cluster)
            events["recovered"] = time.time()

        threading.Thread(target=faults, daemon=True).start()
        sent = 0
        while sent < len(orders):
            due = min(len(orders), int((time.monotonic() - start) * rate))
            if due > sent:
                pub.send(orders[sent:due])
                sent = due
            time.sleep(0.02)
        pub.flush()
        while "recovered" not in events:
            time.sleep(0.2)
        return _books(cluster, orders, events, description)
    finally:
        cluster.stop()


def _books(cluster: Cluster, orders: list[Any], events: dict[str, float], description: str) -> dict[str, Any]:
    from confluent_kafka import Consumer, TopicPartition

    conf = cluster.settings.librdkafka_config()
    conf.update({"group.id": "chaos-books", "enable.auto.commit": "false", "fetch.wait.max.ms": "20"})

    def read(spec: registry.TopicSpec, until: Callable[[list[dict[str, Any]]], bool], timeout: float) -> list:
        consumer = Consumer(conf)
        consumer.assign([TopicPartition(registry.topic_name(spec, cluster.settings), p, 0)
                         for p in range(cluster.settings.partitions)])
        out: list[dict[str, Any]] = []
        deadline, last = time.monotonic() + timeout, time.monotonic()
        while time.monotonic() < deadline and not (until(out) and time.monotonic() - last > 2):
            msgs = [m for m in consumer.consume(2000, 0.2) if not m.error()]
            if msgs:
                last = time.monotonic()
                out += [orjson.loads(m.value()) for m in msgs]
        consumer.close()
        return out

    wanted = {f"4601XXXXAA:{o.order_no}": o for o in orders}
    decisions = read(registry.DECISIONS, lambda r: wanted.keys() <= {d["decisionId"] for d in r}, 120)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for d in decisions:
        by_id.setdefault(d["decisionId"], []).append(d)
    undecided = [k for k in wanted if k not in by_id]
    conflicting = [k for k, ds in by_id.items() if len({(d["status"], d.get("invtNo")) for d in ds}) > 1]
    wrong = [k for k, ds in by_id.items() if k in wanted and
             (ds[0]["status"] == 100) != (wanted[k].expected_status == 100)]
    releases = read(registry.RELEASE, lambda r: True, 10)
    gate = Gate(cluster.settings)
    new_first = gate.record(releases)
    new_again = gate.record(releases)
    released_ids = {e["logisticsNo"] for e in releases if e.get("status") == 800}
    r = state.sync_client_for(cluster.settings)
    quota_wrong = 0
    for k, ds in by_id.items():
        d = ds[0]
        if "buyer" not in d:
            continue
        total = int(r.hget(state.ledger_key(d["buyer"], "2026"), "total") or 0)
        expected = round(float(d["dutiablePrice"]) * 100) if d["status"] != 100 else 0
        quota_wrong += total != expected
    after = [d["timestamps"]["decided"] for d in decisions if d["timestamps"]["decided"] > events["recovered"] * 1000]
    recovery = (min(after) / 1000 - events["recovered"]) if after else None
    return {
        "fault": description, "orders": len(orders),
        "decided": len([k for k in wanted if k in by_id]), "undecided": len(undecided),
        "duplicate_decision_records": sum(len(ds) - 1 for ds in by_id.values()),
        "conflicting_decisions": len(conflicting), "unexpected_outcomes": len(wrong),
        "released": len(released_ids), "gate_releasable_first_pass": new_first, "gate_releasable_replay": new_again,
        "quota_mismatches": quota_wrong,
        # Workers that told Redis had lost data (ClearanceRedisKeyspaceLost): 1 after an emptied Redis.
        "keyspace_lost_told": cluster.metric_sum("clearance_redis_keyspace_lost_total"),
        "duplicate_documents_suppressed": cluster.metric_sum("clearance_duplicate_documents_total"),
        "batch_retries": cluster.metric_sum("clearance_batch_retries_total"),
        "outage_s": round(events["recovered"] - events["injected"], 1),
        "recovery_s": None if recovery is None else round(recovery, 2),
        "lost": len(undecided),
    }


def run_backlog(orders_n: int = 20000, seed: int = 7) -> dict[str, Any]:
    """A slow consumer: a backlog is published while no worker runs; one worker then
    catches up. Memory stays bounded (buffered events are capped) and lag is visible."""
    from benchmarks.throughput import rss_mb

    cluster = Cluster(workers=0, match_timeout=600)  # the backlog, not the timeout, is under test
    try:
        # Complete orders only: with missing documents the run would wait out the match timeout.
        orders = list(generate(orders_n, seed=seed, prefix="CBACK", mix={"ok": 0.9, "amount_mismatch": 0.1}))
        pub = Publisher(cluster.settings, "json", batch=100)
        pub.send(orders)
        pub.flush()
        cluster.start_worker()
        started = time.time()
        events = {"injected": started, "recovered": started}
        peak_rss, peak_lag, samples = 0.0, 0.0, []
        proc, _port = cluster.workers[0]
        while time.time() - started < 300:
            peak_rss = max(peak_rss, rss_mb(proc.pid))
            lag = cluster.metric_sum("clearance_consumer_lag_records")
            peak_lag = max(peak_lag, lag)
            decided = cluster.metric_sum("clearance_decisions_total")
            samples.append((round(time.time() - started, 1), round(peak_rss), int(lag), int(decided)))
            if decided >= len(orders):
                break
            time.sleep(0.5)
        result = _books(cluster, orders, events, "backlog of %d orders published with no worker running, "
                        "then one worker catches up" % len(orders))
        result.update({"catch_up_s": round(time.time() - started, 1), "peak_rss_mb": round(peak_rss),
                       "peak_lag_records_seen": int(peak_lag), "samples": samples[::max(1, len(samples) // 20)]})
        return result
    finally:
        cluster.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", default="all")
    ap.add_argument("--rate", type=float, default=60)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = list(SCENARIOS) + ["backlog"] if args.scenarios == "all" else args.scenarios.split(",")
    results = {}
    for name in names:
        results[name] = run_backlog() if name == "backlog" else run_scenario(name, rate=args.rate)
        print(json.dumps({name: results[name]}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"chaos-{stamp}.json").write_text(json.dumps({"command": " ".join(sys.argv), "results": results},
                                                         indent=1))
    cols = ["fault", "orders", "decided", "lost", "duplicate_decision_records", "conflicting_decisions",
            "unexpected_outcomes", "released", "gate_releasable_first_pass", "gate_releasable_replay",
            "quota_mismatches", "keyspace_lost_told", "duplicate_documents_suppressed", "outage_s", "recovery_s"]
    lines = ["| scenario | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(str(r[c]) for c in cols) + " |")
    (out / f"chaos-{stamp}.md").write_text(f"Command: `{' '.join(sys.argv)}`\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
