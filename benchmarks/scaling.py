"""Throughput against the number of worker processes.

Runs the main benchmark (benchmarks/throughput.py) once per N with N worker
processes in one consumer group, on topics with enough partitions for N, and
writes a table and a plot of sustainable documents/s and p99 at 50 % against N.
On the 2-core development machine record N = 1, 2; on a larger machine run
benchmarks/scaling.sh (N = 1, 2, 4, 8).

Usage: python -m benchmarks.scaling [--workers 1,2,4,8] [--config batch100-json] [--partitions 16]
       [--step-seconds 15] [--rules default]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import report, throughput

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--config", default="batch100-json")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--step-seconds", type=float, default=15)
    ap.add_argument("--orders", type=int, default=8000)
    ap.add_argument("--rules", default="default")
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--probe-seconds", type=float, default=10)
    ap.add_argument("--steps", default="50,100", help="percentages of the sustainable rate per N")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for n in (int(x) for x in args.workers.split(",")):
        folder = throughput.main(["--configs", args.config, "--workers", str(n), "--partitions", str(args.partitions),
                                  "--steps", args.steps, "--step-seconds", str(args.step_seconds),
                                  "--probes", str(args.probes), "--probe-seconds", str(args.probe_seconds),
                                  "--orders", str(args.orders), "--rules", args.rules, "--out", args.out,
                                  "--label", f"scaling-{stamp}-w{n}"])
        cfg = json.loads((folder / "result.json").read_text())["configs"][0]
        summary = cfg["summary"] or [{"latency_ms": {}, "cpu_cores": {}, "books_ok": True}]
        half = next((s for s in summary if s.get("percent") == 50), summary[0])
        cpu = sum(v for k, v in summary[-1]["cpu_cores"].items() if k.startswith("worker"))
        rows.append({"workers": n, "sustainable_documents_per_s": cfg["sustainable_documents_per_s"],
                     "saturation_documents_per_s": cfg["saturation"]["documents_per_s"],
                     "p99_ms_at_50_percent": half["latency_ms"].get("p99"), "worker_cpu_cores": round(cpu, 2),
                     "other_cpu_cores": {k.split("-")[0]: v for k, v in summary[-1]["cpu_cores"].items()
                                         if not k.startswith("worker")},
                     "books_ok": all(s["books_ok"] for s in summary) and cfg["saturation"]["books"]["ok"], "results": str(folder)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["sustainable_documents_per_s"] or 1
    m = report.machine(partitions=args.partitions)
    lines = [f"Command: `python -m benchmarks.scaling {' '.join(sys.argv[1:])}`", "",
             f"Machine: {report.machine_line(m)}", "",
             ("| workers | sustainable docs/s | × N=1 | saturation docs/s | p99 at 50 % (ms) | worker CPU (cores) "
              "| broker / Redis / generator CPU (cores) | books |"),
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['sustainable_documents_per_s']:,} | "
                     f"{r['sustainable_documents_per_s'] / base:.2f} | {r['saturation_documents_per_s']:,} | "
                     f"{r['p99_ms_at_50_percent']} | {r['worker_cpu_cores']} | "
                     f"{' / '.join(str(r['other_cpu_cores'].get(k, '–')) for k in ('tansu', 'redis', 'generator'))} | "
                     f"{'ok' if r['books_ok'] else 'FAILED'} |")
    out = Path(args.out)
    (out / f"scaling-{stamp}.md").write_text("\n".join(lines) + "\n")
    (out / f"scaling-{stamp}.json").write_text(json.dumps({"command": sys.argv, "machine": m, "rows": rows},
                                                          indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["workers"] for r in rows]
    ax.plot(ns, [r["sustainable_documents_per_s"] for r in rows], marker="o", label="sustainable")
    ax.plot(ns, [base * n for n in ns], ":", color="grey", label="linear")
    ax.set_xlabel("worker processes")
    ax.set_ylabel("documents/s")
    ax.set_title(f"Scaling, {args.config}")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"scaling-{stamp}.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
