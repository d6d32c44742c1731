"""The clearance benchmark: real worker(s) on the embedded broker and Redis (or
the cluster named by KAFKA_BOOTSTRAP / REDIS_URL), driven open loop.

Per configuration (documents per record 1 or 100; JSON or XML):

1. saturation: a backlog is published as fast as possible; its throughput is
   the first estimate of capacity;
2. sustainable throughput: short probes at that rate, 10 % lower each time,
   until one holds (achieved ≥ 95 % of offered and the backlog does not grow);
3. steps at 25/50/75/90/100 % of the sustainable rate (optionally repeated),
   each reporting offered vs achieved rate, decision latency percentiles
   (HdrHistogram, warm-up excluded), backlog over time, CPU and RSS per
   process, and the books: every order exactly one decision, the expected one.

`--scenario national-peak` instead offers 5,668 documents/s (1,417
declarations/s, the 2024 peak of China's unified system) for `--peak-seconds`
to one configuration and reports whether it holds and at what latency.

Results: a folder under benchmarks/results/ with result.json (command, machine,
workload, every number), the raw histograms (hist/*.hdr, HdrHistogram's
compressed form), summary.md and PNG plots. A table at the end in the terminal.

Usage: python -m benchmarks.throughput [--configs per-doc-json,batch100-json,batch100-xml]
       [--steps 25,50,75,90,100] [--step-seconds 20] [--repeat 1] [--workers 1] [--rules default|spine|FILE]
       [--gap-ms 20] [--duplicates 0.02] [--mix realistic|clean] [--scenario steps|national-peak]
       (also: clearance bench ...; make bench)
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from benchmarks import openloop, report
from benchmarks.openloop import cpu_seconds, rss_mb  # noqa: F401  (used by benchmarks.chaos)
from config.settings import load_settings
from streams import embedded
from streams.simulator import generate
from topics import registry

ROOT = Path(__file__).resolve().parent.parent
NATIONAL_PEAK_DOCS_PER_S = 5668  # 1,417 declarations/s × 4 documents (DOMAIN.md §5)
RUNS: list["Run"] = []  # stopped on exit, whatever happens


class Run:
    """Worker processes on fresh topics, a producer, and a consumer of the decisions."""

    def __init__(self, services: Any, tag: str, workers: int, extra_env: dict[str, str], partitions: int = 4):
        self.env = dict(os.environ, **services.env(), CLEARANCE_TOPIC_PREFIX=f"b{tag}.", CLEARANCE_GROUP=f"b{tag}",
                        CLEARANCE_SESSION_TIMEOUT_S="6", CLEARANCE_PARTITIONS=str(partitions), **extra_env)
        self.settings = load_settings(self.env)
        registry.ensure_topics(self.settings)
        self.ports = [embedded.free_port() for _ in range(workers)]
        self._scraped: tuple[float, list[str] | None] = (0.0, None)
        self.procs = [subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-port", str(port),
                                        "--loglevel", "warn"], env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True) for port in self.ports]
        RUNS.append(self)
        self.services = services
        self._wait_joined()
        from confluent_kafka import Consumer, Producer, TopicPartition

        conf = self.settings.librdkafka_config()
        self.producer = Producer(dict(conf, **{"linger.ms": "1", "batch.num.messages": "10000",
                                               "queue.buffering.max.messages": "2000000"}))
        self.consumer = Consumer(dict(conf, **{"group.id": f"bench-{tag}", "enable.auto.commit": "false",
                                               "fetch.wait.max.ms": "5", "auto.offset.reset": "latest"}))
        topic = registry.topic_name(registry.DECISIONS, self.settings)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(self.settings.partitions)])

    def _wait_joined(self) -> None:
        deadline = time.monotonic() + 90
        want = self.settings.partitions * len(registry.INBOUND)
        while time.monotonic() < deadline:
            try:
                held = sum(orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/health",
                                                               timeout=1).read())["assigned"] for port in self.ports)
            except Exception:
                held = -1
            if held == want:
                return
            time.sleep(0.3)
        raise TimeoutError("workers did not take all partitions within 90 s")

    def _scrape(self) -> list[str] | None:
        # One scrape per sample serves every metric read in it: rendering /metrics
        # costs the worker CPU (~5 % of it when scraped four times a second).
        now = time.monotonic()
        if now - self._scraped[0] < 0.25:
            return self._scraped[1]
        texts: list[str] | None = []
        for port in self.ports:
            try:
                texts.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode())
            except Exception:
                texts = None
                break
        self._scraped = (now, texts)
        return texts

    def metric(self, name: str) -> float | None:
        texts = self._scrape()
        if texts is None:
            return None
        return sum(float(line.rsplit(" ", 1)[1]) for text in texts for line in text.splitlines()
                   if line.startswith((name + "{", name + " ")))

    def target(self) -> openloop.Target:
        pids = {f"worker{i + 1}": p.pid for i, p in enumerate(self.procs)}
        for p in self.services.procs:
            pids[Path(str(p.args[0])).name.replace("-server", "")] = p.pid
        pids["generator"] = os.getpid()
        topics = {t: registry.topic_name(registry.sender_topic(t), self.settings) for t in openloop.ORDER_TYPES}
        return openloop.Target(self.producer, self.consumer, topics, pids=pids,
                               backlog=lambda: self.metric("clearance_consumer_lag_records"),
                               consumed=lambda: self.metric("clearance_documents_consumed_total"))

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.consumer.close()
        RUNS.remove(self)


def backlog_growing(samples: list[dict[str, float]], send_s: float, order_rate: float) -> bool:
    """Least-squares slope of in-flight orders over the second half of the send
    window; growing when it exceeds 2 % of the offered order rate."""
    pts = [(s["t"], s["in_flight_orders"]) for s in samples if send_s / 2 <= s["t"] <= send_s]
    if len(pts) < 4:
        return False
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (v - mv) for t, v in pts) / var if var else 0.0
    return slope > 0.02 * order_rate


class Bench:
    def __init__(self, args: argparse.Namespace, services: Any):
        self.args = args
        self.services = services
        self.seq = 0
        self.exact = args.rules == "spine"
        self.mix = openloop.CLEAN if args.mix == "clean" else openloop.REALISTIC
        env = {"CLEARANCE_MATCH_TIMEOUT_S": str(args.match_timeout)}
        if args.rules != "default":
            env["CLEARANCE_RULES"] = args.rules if args.rules == "spine" else str(Path(args.rules).resolve())
        self.env = env

    def orders(self, n: int) -> list[Any]:
        self.seq += 1
        return list(generate(max(1, n), seed=self.seq, prefix=f"B{self.seq:03d}", mix=self.mix))

    def load(self, docs_per_s: float, seconds: float, per_record: int, fmt: str) -> openloop.Workload:
        n = int(docs_per_s * seconds / 4)
        if per_record > 1:
            n = max(per_record, n - n % per_record)
        return openloop.build(self.orders(n), docs_per_s, per_record, fmt, self.args.gap_ms / 1000,
                              self.args.duplicates, seed=self.seq)

    def step(self, run: Run, load: openloop.Workload, rate: float, label: str, progress: Any) -> dict[str, Any]:
        task = progress.add_task(label, total=max(load.seconds, 0.1))

        def tick(el: float, s: dict[str, float]) -> None:
            progress.update(task, completed=min(el, load.seconds),
                            description=f"{label}: {s['decided_documents_per_s']:>6,} docs/s, "
                                        f"{s['in_flight_orders']:>6,} in flight")

        res = openloop.run(run.target(), load, rate, warmup_s=0.1 * load.seconds,
                           drain_s=max(self.args.drain_seconds, self.args.match_timeout + 15), tick=tick)
        progress.update(task, completed=load.seconds)
        progress.remove_task(task)
        order_rate = rate * len(load.orders) / max(1, load.documents)
        growing = backlog_growing(res.samples, res.send_seconds, order_rate)
        out = {"offered_documents_per_s": round(rate), "achieved_documents_per_s": round(res.achieved_documents_per_s),
               "send_seconds": res.send_seconds, "drain_seconds": res.drain_seconds,
               "generator_late_max_s": res.generator_late_max_s, "backlog_growing": growing,
               "held": (not growing) and res.achieved_documents_per_s >= 0.95 * rate,
               "latency_ms": res.latency_ms(), "cpu_s": res.cpu_s,
               "cpu_cores": {n: round(c / res.send_seconds, 2) for n, c in res.cpu_s.items()} if res.send_seconds else {},
               "rss_mb_max": res.rss_mb, "books": openloop.books(load, res, self.exact),
               "samples": res.samples, "workload": load.describe()}
        out["latency_stages_ms"] = res.stages_ms()
        out["_hist"] = res.histogram
        out["_stages"] = res.stages
        return out

    def saturation(self, run: Run, per_record: int, fmt: str, progress: Any) -> dict[str, Any]:
        orders = self.orders(self.args.orders)
        if per_record > 1:
            orders = orders[:max(per_record, len(orders) - len(orders) % per_record)]
        load = openloop.build(orders, 1e9, per_record, fmt, 0.0, self.args.duplicates, seed=self.seq)
        task = progress.add_task(f"saturation ({load.documents:,} documents as fast as possible)", total=None)
        res = openloop.run(run.target(), load, 1e9, drain_s=max(120.0, self.args.match_timeout + 15))
        progress.remove_task(task)
        # Capacity from the complete orders' decisions: the last of them marks the backlog consumed
        # (orders with a missing document wait for the match timeout, which is not work).
        last = max((t for no, t in res.decided_at.items() if no in load.completes), default=0.0)
        return {"documents": load.documents, "seconds": round(last, 2),
                "documents_per_s": round(load.documents / last) if last else 0,
                "rss_mb_max": res.rss_mb, "books": openloop.books(load, res, self.exact)}

    def config(self, name: str, progress: Any) -> dict[str, Any]:
        per_record = 1 if name.startswith("per-doc") else int(name[5:].split("-")[0])
        fmt = name.rsplit("-", 1)[1]
        run = Run(self.services, f"{name[:3]}{int(time.time())}", self.args.workers, self.env, self.args.partitions)
        try:
            out: dict[str, Any] = {"config": name}
            if self.args.scenario == "national-peak":
                load = self.load(NATIONAL_PEAK_DOCS_PER_S, self.args.peak_seconds, per_record, fmt)
                out["peak"] = self.step(run, load, NATIONAL_PEAK_DOCS_PER_S, f"{name} national peak", progress)
                return out
            sat = self.saturation(run, per_record, fmt, progress)
            out["saturation"] = sat
            rate = sat["documents_per_s"]
            probes = []
            for _ in range(self.args.probes):
                p = self.step(run, self.load(rate, self.args.probe_seconds, per_record, fmt), rate,
                              f"{name} probe {rate:,} docs/s", progress)
                probes.append(p)
                if p["held"]:
                    break
                rate = int(rate * 0.9)
            out["probes"] = probes
            out["sustainable_documents_per_s"] = rate
            # When no probe held, the rate the steps use is 10 % below the last probe, untested.
            out["sustainable_verified"] = any(p["held"] for p in probes)
            out["steps"] = []
            for pct in self.args.steps:
                r = rate * pct / 100
                reps = [self.step(run, self.load(r, self.args.step_seconds, per_record, fmt), r,
                                  f"{name} {pct}% ({r:,.0f} docs/s) run {k + 1}/{self.args.repeat}", progress)
                        for k in range(self.args.repeat)]
                out["steps"].append({"percent": pct, "runs": reps})
            return out
        finally:
            run.stop()


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="clearance bench")
    ap.add_argument("--configs", default="per-doc-json,batch100-json,batch100-xml",
                    help="comma-separated: per-doc-json, per-doc-xml, batchN-json, batchN-xml, batchN-dxp (N ≤ 100; "
                         "dxp: CEB XML in DxpMsg envelopes)")
    ap.add_argument("--scenario", choices=["steps", "national-peak"], default="steps")
    ap.add_argument("--steps", type=lambda s: [int(x) for x in s.split(",") if x], default=[25, 50, 75, 90, 100],
                    help='percentages of the sustainable rate ("" for none: saturation and probes only)')
    ap.add_argument("--step-seconds", type=float, default=20)
    ap.add_argument("--repeat", type=int, default=1, help="runs per step (histograms merged)")
    ap.add_argument("--orders", type=int, default=6000, help="orders in the saturation backlog")
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--probe-seconds", type=float, default=10)
    ap.add_argument("--peak-seconds", type=float, default=180)
    ap.add_argument("--drain-seconds", type=float, default=30,
                    help="after sending, how long a step may take to decide the rest (books count what is left)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes in the consumer group")
    ap.add_argument("--partitions", type=int, default=4, help="partitions per topic (at least --workers)")
    ap.add_argument("--rules", default="default", help='"default" (config/rules/default.yaml), "spine" '
                    '(match-only: comparison rules and limits) or a rule-set file')
    ap.add_argument("--mix", choices=["realistic", "clean"], default="realistic",
                    help="realistic: 80 %% clean orders, the rest mismatches, limits and missing documents")
    ap.add_argument("--gap-ms", type=float, default=20, help="gap between the documents of one order")
    ap.add_argument("--duplicates", type=float, default=0.02, help="share of documents sent twice")
    ap.add_argument("--match-timeout", type=float, default=5, help="CLEARANCE_MATCH_TIMEOUT_S of the workers")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--label", default="")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    base = load_settings()
    # SIGTERM unwinds like Ctrl-C, so the finally below stops every process we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    services = embedded.start(base.kafka_bootstrap, base.redis_url)
    results: list[dict[str, Any]] = []
    started = time.time()
    try:
        bench = Bench(args, services)
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                      transient=True) as progress:
            for name in args.configs.split(","):
                results.append(bench.config(name.strip(), progress))
    finally:
        for run in list(RUNS):
            for p in run.procs:
                p.kill()
                p.wait(10)
        services.stop()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(args.out) / f"bench-{args.label or stamp}"
    doc = {"command": " ".join(["python -m benchmarks.throughput", *(argv if argv is not None else sys.argv[1:])]),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
           "wall_seconds": round(time.time() - started), "scenario": args.scenario,
           "machine": report.machine(workers=args.workers, rules=args.rules, match_timeout_s=args.match_timeout,
                                     partitions=args.partitions),
           "method": {"latency": "intended send time of the completing document → decision read from "
                      "clearance.decisions by the benchmark's consumer; HdrHistogram 1 µs–1 h, 3 digits",
                      "warmup": "first 10 % of each step's schedule excluded from the histogram",
                      "gap_ms": args.gap_ms, "duplicates": args.duplicates, "mix": args.mix,
                      "steps_percent": args.steps, "step_seconds": args.step_seconds, "repeat": args.repeat},
           "configs": results}
    report.write(folder, doc, plots=not args.no_plots)
    report.print_table(doc)
    print(f"results: {folder}")
    return folder


if __name__ == "__main__":
    main()
