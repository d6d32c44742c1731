"""Redis's cost per document in instructions, counted by valgrind (callgrind).

Redis runs every script for the whole consumer group on one thread, so its
cost per document bounds the group. CPU time on a shared machine drifts by
±20 % between runs (benchmarks/README.md); the number of instructions Redis
executes for the same work does not, so two versions of the scripts compare
exactly. Redis runs under callgrind (about 50× slower, so the workloads are
small); counting starts after a warm-up and covers only the workload.

Workloads:
  pipeline  the worker's whole batch pipeline (benchmarks.stages: 100-document
            messages, every order complete and released, the rule set given)
  match     MATCH alone, as benchmarks.redis_scripts calls it
  observe   OBSERVE alone (four risk counters per order, all new)

Needs valgrind (Debian: apt-get install valgrind).

Usage: python -m benchmarks.redis_instructions [--orders 1000] [--rules spine|FILE] [--workloads pipeline,match,observe]
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import shutil
import subprocess
import tempfile
import time
from typing import Any, Callable

import redis

from benchmarks import redis_scripts
from benchmarks.stages import MemorySink, make_batches
from config.settings import Settings
from processors import decide, ruleset
from streams import embedded, state
from streams.pipeline import Pipeline


class CountedRedis:
    """redis-server under callgrind, with its instruction counter read and reset on demand."""

    def __init__(self) -> None:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
        self.dir = tempfile.mkdtemp(prefix="clearance-callgrind-")
        self.port = embedded.free_port()
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.dir}/cg.%p", embedded.redis_binary(),
             "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server under valgrind did not start") from None
                time.sleep(0.2)

    def reset(self) -> None:
        self._control("-z")

    def instructions(self) -> int:
        """Instructions since the last reset (the counter is reset again)."""
        before = set(glob.glob(f"{self.dir}/cg.*"))
        self._control("-d")
        deadline = time.monotonic() + 60
        while True:
            new = set(glob.glob(f"{self.dir}/cg.*")) - before
            total = _totals(new.pop()) if new else None
            if total is not None:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("callgrind wrote no dump")
            time.sleep(0.2)
        self.reset()
        return total

    def _control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(self.proc.pid)], check=True, capture_output=True)

    def stop(self) -> None:
        try:
            self.client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _totals(path: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None  # still being written


def pipeline_workload(url: str, orders: int, rules: Any, prefix: str) -> int:
    """Run the batch pipeline over `orders` complete orders; returns documents."""
    settings = Settings(kafka_bootstrap="unused:1", redis_url=url)

    async def run() -> None:
        client = state.async_client(url)
        p = Pipeline(settings, client, MemorySink(), rules)
        for batch in make_batches(orders, prefix=prefix):
            await p.process(batch)
        await client.aclose()

    asyncio.run(run())
    return 4 * orders


def measure(counted: CountedRedis, work: Callable[[], int]) -> float:
    counted.reset()
    docs = work()
    return counted.instructions() / docs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=1000)
    ap.add_argument("--rules", default="config/rules/default.yaml",
                    help='"spine" (comparison + limits) or a rule-set file (default: the full rule set)')
    ap.add_argument("--workloads", default="pipeline,match,observe")
    args = ap.parse_args()
    rules = decide.SpineRules() if args.rules == "spine" else ruleset.load(args.rules)
    counted = CountedRedis()
    try:
        r = counted.client
        for name in args.workloads.split(","):
            # Warm-up: scripts loaded, first keys and allocations made, not counted.
            if name == "pipeline":
                pipeline_workload(counted.url, 100, rules, "WU")
                per_doc = measure(counted, lambda: pipeline_workload(counted.url, args.orders, rules, "HN"))
            elif name in ("match", "observe"):
                script = getattr(redis_scripts, name)
                script(r, 100)
                per_doc = measure(counted, lambda: script(r, args.orders) and 4 * args.orders)
            else:
                raise SystemExit(f"unknown workload {name!r}")
            print(f"{name:9} {per_doc:10,.0f} Redis instructions per document ({args.orders:,} orders)", flush=True)
            r.flushdb()
    finally:
        counted.stop()


if __name__ == "__main__":
    main()
