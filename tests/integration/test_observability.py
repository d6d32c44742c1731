"""What SREs rely on, against a running worker: every metric the dashboard and
alerts use is exported, a real Prometheus scrapes it and loads the alerts, and
`clearance top` shows the worker."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import orjson
import pytest
import yaml

from streams.embedded import free_port
from streams.simulator import Publisher, generate
from tests.conftest import ROOT
from tests.integration.worker import Env, Reader
from topics import registry

pytestmark = pytest.mark.integration

METRIC = re.compile(r"\b((?:clearance|process)_[a-z0-9_]+)")


def referenced_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "ops" / "grafana" / "clearance.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs += [r["expr"] for r in rules]
    names = {m for e in exprs for m in METRIC.findall(e)}
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


@pytest.fixture(scope="module")
def env(services):
    # Its 2 s match timeout must not sweep other tests' pending orders: a namespace of its own.
    e = Env(services, CLEARANCE_MATCH_TIMEOUT_S="2", CLEARANCE_REDIS_NAMESPACE="observability")
    e.start_worker()
    e.wait_assigned()
    orders = list(generate(200, seed=51, prefix="OBS"))
    pub = Publisher(e.settings, "json", batch=1, duplicate_rate=0.05)
    pub.send(orders)
    pub.send_raw("311", "BAD", b"{broken")
    pub.flush()
    Reader(e, registry.DECISIONS).read_until(lambda r: len(r) >= len(orders), 90)
    time.sleep(3)  # a lag probe and a sweep run
    e.orders = orders
    yield e
    e.stop()


def gate_metrics_page(env) -> str:
    """/metrics of a real `clearance gate` service, on the env's broker and Redis."""
    port = free_port()
    gate = subprocess.Popen([sys.executable, "-m", "streams.cli", "gate", "--http-port", str(port)], env=env.env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                if time.monotonic() > deadline or gate.poll() is not None:
                    raise
                time.sleep(0.3)
    finally:
        os.killpg(gate.pid, signal.SIGTERM)
        gate.wait(15)


def test_every_metric_the_dashboard_and_alerts_use_is_exported(env):
    # By a worker, or by a gate service (the clearance_gate_* series).
    exported = set(re.findall(r"^# HELP (\S+)", env.metrics(0) + gate_metrics_page(env), re.M))
    exported |= {re.sub(r"_total$", "", n) + "_total" for n in exported}  # counters: HELP names drop _total
    needed = referenced_metrics()
    assert "clearance_decision_latency_seconds" in needed and "process_cpu_seconds_total" in needed
    assert needed <= exported, sorted(needed - exported)


def test_a_real_prometheus_scrapes_the_worker_and_loads_the_alerts(env):
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.fail("prometheus not found: `make test` installs Debian's prometheus package")
    workdir = tempfile.mkdtemp()
    port = free_port()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(ROOT / "ops" / "prometheus" / "alerts.yml")],
              "scrape_configs": [{"job_name": "clearance",
                                  "static_configs": [{"targets": [f"127.0.0.1:{env.workers[0][1]}"]}]}]}
    cfg = f"{workdir}/prometheus.yml"
    with open(cfg, "w") as f:
        f.write(yaml.safe_dump(config))
    proc = subprocess.Popen([exe, f"--config.file={cfg}", f"--storage.tsdb.path={workdir}/data",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def query(q: str) -> list:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        return orjson.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]

    try:
        deadline = time.monotonic() + 60
        decided = []
        while time.monotonic() < deadline:
            try:
                decided = query("sum(clearance_decisions_total)")
                if decided and float(decided[0]["value"][1]) >= len(env.orders):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert decided and float(decided[0]["value"][1]) == len(env.orders)
        assert float(query('up{job="clearance"}')[0]["value"][1]) == 1
        by_status = {r["metric"]["status"]: float(r["value"][1])
                     for r in query("sum by (status) (clearance_decisions_total)")}
        assert by_status["800"] > 0 and by_status["100"] > 0
        assert query('clearance_errors_total{reason="malformed_json"}')
        rules = orjson.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).read())
        names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert {"ClearanceNoDecisions", "ClearanceRedisUnreachable"} <= names
        assert all(r["health"] == "ok" for g in rules["data"]["groups"] for r in g["rules"])
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_top_shows_the_worker(env):
    out = env.cli("top", "--once", "--interval", "1", f"http://127.0.0.1:{env.workers[0][1]}")
    assert out.returncode == 0, out.stderr
    assert "clearance workers" in out.stdout and f"127.0.0.1:{env.workers[0][1]}" in out.stdout
    assert "test-1" in out.stdout  # the rule set in force
    down = env.cli("top", "--once", "--interval", "0.1", f"http://127.0.0.1:{free_port()}")
    assert "down" in down.stdout
