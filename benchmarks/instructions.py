"""Cost per document in instructions, counted by valgrind: exact where CPU
time on a shared machine drifts by ±20 % between runs (benchmarks/README.md),
so two versions of the code compare to a fraction of a percent.

rules   each step of deciding a complete order, per order (4 documents), pure
        functions without Redis: compare, facts (with the tax), evaluate
        (compare + facts + the rule set's conditions), observations (risk
        counters to update), quota (ledger reservations), decision (the record)
decode  decoding alone (ceb.decode: parse, validate, fields as dicts), and for
        XML its parts: lxml's parse, the XSD validation, the dicts from the
        tree (each part's count includes what it needs before it)
worker  the worker's batch pipeline (benchmarks.stages: 100-document messages,
        every order complete and released, the rule set given), run twice
        under cachegrind with N and 3N orders; the difference divided by the
        extra documents is the cost of one more document, without start-up,
        imports and test-data generation. Redis runs natively beside it.
redis   Redis under callgrind (about 50x slower, so the workloads are small),
        counting only the workload after a warm-up:
          pipeline  the same batch pipeline, Redis's side of it
          match     MATCH alone, as benchmarks.redis_scripts calls it
          observe   OBSERVE alone (four risk counters per order, all new)
          calls     what a script call costs per key with nothing in it, and
                    what each command adds (scripts over 8,000 new keys)
        Redis runs every script for the whole consumer group on one thread,
        so its cost per document bounds the group.

Instructions are not time (memory stalls, the branch predictor), but for the
same workload on the same binaries fewer instructions is less CPU.

Needs valgrind (Debian: apt-get install valgrind).

Usage: python -m benchmarks.instructions [--orders 200] [--rules spine|FILE] [--parts decode,rules,worker,redis]
                                         [--format json|xml|dxp]
                                         [--redis-workloads pipeline,match,observe,calls]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import os
import shutil
import re
import subprocess
import sys
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


def run_pipeline(url: str, batches: list[Any], rules: Any, empty_first: bool = False) -> None:
    """The batch pipeline over consumed batches, outputs kept in memory."""
    async def run() -> None:
        client = state.async_client(url)
        if empty_first:
            await client.flushdb()
        p = Pipeline(Settings(kafka_bootstrap="unused:1", redis_url=url), client, MemorySink(), rules)
        for batch in batches:
            await p.process(batch)
        await p.aclose()
        await client.aclose()

    asyncio.run(run())


def pipeline_workload(url: str, orders: int, rules: Any, prefix: str) -> int:
    """Run the batch pipeline over `orders` complete orders; returns documents."""
    run_pipeline(url, make_batches(orders, prefix=prefix), rules)
    return 4 * orders


def measure(counted: CountedRedis, work: Callable[[], int]) -> float:
    counted.reset()
    docs = work()
    return counted.instructions() / docs


def worker_run(orders: int, url: str, rules_arg: str, fmt: str) -> None:
    """The measured program: the pipeline over `orders` orders of a fixed set."""
    from streams.app import tune_gc

    rules = _rules(rules_arg)
    batches = make_batches(MAX_ORDERS, fmt)  # generated in full in every run: a constant
    warm = make_batches(100, fmt, prefix="WU")
    tune_gc()
    run_pipeline(url, warm + batches[:orders // 100], rules, empty_first=True)


MAX_ORDERS = 3000

DECODE_STAGES = {"json": ("decode",), "dxp": ("decode",), "xml": ("decode", "parse", "parse+validate", "parse+dicts")}


def decode_run(stage: str, orders: int, fmt: str) -> None:
    """The measured program for one decode stage over `orders` orders' messages."""
    from lxml import etree

    from streams.app import tune_gc
    from topics import ceb

    values = [r.value or b"" for batch in make_batches(MAX_ORDERS, fmt) for r in batch][:4 * orders // 100]
    ceb.decode(values[0])  # schema and decoders built before counting starts
    tune_gc()
    for value in values:
        if stage == "decode":
            ceb.decode(value)
            continue
        root = etree.fromstring(value, ceb._SECURE_PARSER)
        if stage == "parse+validate":
            ceb.import_schema().validate(root)
        elif stage == "parse+dicts":
            kind = ceb.KIND_BY_ROOT[ceb._local(root.tag)]
            ceb.xml_documents(root.findall(f"{{{ceb.NS}}}{kind.wrapper or kind.head}"), kind)


RULE_STEPS = ("compare", "facts", "evaluate", "observations", "quota", "decision")


def rules_run(step: str, orders: int, rules_arg: str) -> None:
    """The measured program for one step of deciding an order, over `orders`
    complete orders (pure functions: no Redis; risk counters absent, i.e. 0)."""
    from processors import compare, features
    from processors.documents import normalise
    from processors.rules import Case
    from topics import ceb

    rules = _rules(rules_arg)
    by_order: dict[str, dict[str, Any]] = {}
    for batch in make_batches(MAX_ORDERS):  # decoded in full in every run: a constant
        for rec in batch:
            for raw in ceb.decode(rec.value or b"").documents:
                doc = normalise(raw.kind, raw.head, raw.lines, b"k")
                by_order.setdefault(doc["head"]["orderNo"], {})[raw.kind] = doc
    cases = [(Case(docs, 0, 0, 0), "clr:o:{o00}:" + no) for no, docs in list(by_order.items())[:orders]]
    hits = compare.compare(cases[0][0])
    run: Callable[[Case, str], Any] = {
        "compare": lambda c, k: compare.compare(c),
        "facts": lambda c, k: features.facts(c, rules.reference),
        "evaluate": lambda c, k: rules.evaluate(c),
        "observations": lambda c, k: rules.observations(c, k),
        "quota": lambda c, k: rules.quota_requests(c, k),
        "decision": lambda c, k: decide.build_decision(c, k, hits, rules.version, "1" * 18, "2" * 18, 0),
    }[step]
    # Steps are small (tens of thousands of instructions per order): a
    # collection falling in one run and not the other would swamp them.
    gc.collect()
    gc.disable()
    for case, key in cases:
        run(case, key)


def _counted(argv: list[str], env: dict[str, str] | None = None) -> int:
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                          sys.executable, "-m", "benchmarks.instructions", *argv],
                         capture_output=True, text=True, check=True, env=env)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise RuntimeError("cachegrind printed no instruction count:\n" + out.stderr[-2000:])
    return int(found.group(1).replace(",", ""))


def _per_document(orders: int, argv: Callable[[int], list[str]], env: dict[str, str] | None = None) -> float:
    """Instructions per document: runs of `orders` and 3 x `orders` orders differenced,
    so start-up, imports and test data cancel out."""
    if not 100 <= orders <= MAX_ORDERS // 3:
        raise SystemExit(f"--orders between 100 and {MAX_ORDERS // 3}")
    orders -= orders % 100  # whole batches of 100 orders
    return (_counted(argv(3 * orders), env) - _counted(argv(orders), env)) / (4 * 2 * orders)


def rules_instructions(orders: int, rules_arg: str) -> dict[str, float]:
    """Per order (4 documents), each step of deciding it."""
    # One hash seed for both runs of a step: set and dict layouts then agree.
    env = dict(os.environ, PYTHONHASHSEED="0")
    return {step: 4 * _per_document(orders, lambda n: ["--rules-run", step, str(n), "--rules", rules_arg], env)
            for step in RULE_STEPS}


def decode_instructions(orders: int, fmt: str) -> dict[str, float]:
    return {stage: _per_document(orders, lambda n: ["--decode-run", stage, str(n), "--format", fmt])
            for stage in DECODE_STAGES[fmt]}


def worker_instructions(orders: int, rules_arg: str, fmt: str = "json") -> float:
    services = embedded.start("unused:1", "")  # its own Redis: the runs empty it
    try:
        return _per_document(orders, lambda n: ["--worker-run", str(n), services.redis_url, "--rules", rules_arg,
                                                "--format", fmt])
    finally:
        services.stop()


def _rules(arg: str) -> Any:
    return decide.SpineRules() if arg == "spine" else ruleset.load(arg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=200)
    ap.add_argument("--rules", default="config/rules/default.yaml",
                    help='"spine" (comparison + limits) or a rule-set file (default: the full rule set)')
    ap.add_argument("--parts", default="worker,redis")
    ap.add_argument("--format", choices=["json", "xml", "dxp"], default="json",
                    help="of the worker's messages (dxp: XML in DxpMsg envelopes)")
    ap.add_argument("--redis-workloads", default="pipeline,match,observe")
    ap.add_argument("--worker-run", nargs=2, metavar=("ORDERS", "REDIS_URL"), help=argparse.SUPPRESS)
    ap.add_argument("--decode-run", nargs=2, metavar=("STAGE", "ORDERS"), help=argparse.SUPPRESS)
    ap.add_argument("--rules-run", nargs=2, metavar=("STEP", "ORDERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_run:
        worker_run(int(args.worker_run[0]), args.worker_run[1], args.rules, args.format)
        return
    if args.decode_run:
        decode_run(args.decode_run[0], int(args.decode_run[1]), args.format)
        return
    if args.rules_run:
        rules_run(args.rules_run[0], int(args.rules_run[1]), args.rules)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    parts = args.parts.split(",")
    if "decode" in parts:
        for stage, per_doc in decode_instructions(args.orders, args.format).items():
            print(f"decode    {per_doc:10,.0f} instructions per document ({args.format}: {stage})", flush=True)
    if "rules" in parts:
        for step, per_order in rules_instructions(args.orders, args.rules).items():
            print(f"rules     {per_order:10,.0f} instructions per order ({step})", flush=True)
    if "worker" in parts:
        per_doc = worker_instructions(args.orders, args.rules, args.format)
        print(f"worker    {per_doc:10,.0f} instructions per document ({args.format}; {args.orders:,} and "
              f"{3 * args.orders:,} orders)", flush=True)
    if "redis" in parts:
        redis_side(args.orders, _rules(args.rules), args.redis_workloads.split(","))


# Script bodies that each add one command to the one before (keys all new).
CALLS = {
    "empty": "",
    "{reply}": "out[i] = {1}",
    "+ ZADD": "redis.call('ZADD', KEYS[i], ARGV[1], ARGV[2 * i + 1])",
    "+ PEXPIRE": "redis.call('ZADD', KEYS[i], ARGV[1], ARGV[2 * i + 1]) redis.call('PEXPIRE', KEYS[i], 1000000)",
    "+ ZCOUNT": "redis.call('ZADD', KEYS[i], ARGV[1], ARGV[2 * i + 1]) redis.call('PEXPIRE', KEYS[i], 1000000) "
                "redis.call('ZCOUNT', KEYS[i], '(1', '+inf')",
}


def script_calls(counted: CountedRedis) -> None:
    r = counted.client
    before = 0.0
    for n, (name, body) in enumerate(CALLS.items()):
        script = r.register_script("local out = {} for i = 1, #KEYS do out[i] = 1 " + body + " end return out")
        script(keys=["warm"], args=[1, "f", "m"])
        r.flushdb()
        counted.reset()
        for b in range(20):
            keys = [f"clr:f:{{f00}}:address:{n}:{b}:{i}" for i in range(400)]
            args: list[Any] = [1_795_000_000_000]
            for i in range(400):
                args += ["address", f"m{i}"]
            script(keys=keys, args=args)
        per_key = counted.instructions() / 8000
        print(f"redis call  {name:10} {per_key:10,.0f} instructions per key"
              + (f" ({per_key - before:+,.0f})" if before else ""), flush=True)
        if name != "{reply}":  # a table per item in the reply, instead of a number; the others reply numbers
            before = per_key


def redis_side(orders: int, rules: Any, workloads: list[str]) -> None:
    counted = CountedRedis()
    try:
        r = counted.client
        for name in workloads:
            # Warm-up: scripts loaded, first keys and allocations made, not counted.
            if name == "pipeline":
                pipeline_workload(counted.url, 100, rules, "WU")
                per_doc = measure(counted, lambda: pipeline_workload(counted.url, orders, rules, "HN"))
            elif name == "calls":
                script_calls(counted)
                continue
            elif name in ("match", "observe"):
                script = getattr(redis_scripts, name)
                script(r, 100)
                per_doc = measure(counted, lambda: script(r, orders) and 4 * orders)
            else:
                raise SystemExit(f"unknown workload {name!r}")
            print(f"redis {name:9} {per_doc:10,.0f} instructions per document ({orders:,} orders)", flush=True)
            r.flushdb()
    finally:
        counted.stop()


if __name__ == "__main__":
    main()
