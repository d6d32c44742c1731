"""The release cycle with real processes: worker, gate service (HTTP), CLI."""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest

from streams import __version__
from streams.embedded import free_port
from streams.simulator import Publisher, cancel_document, make_order, to_json
from tests.conftest import ROOT
from tests.integration.worker import Env, Reader
from topics import registry

pytestmark = pytest.mark.integration


def http(method: str, url: str, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


def wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError


def test_release_exit_cancel_guarantee_and_trace_across_processes(services, redis_url,  # redis_url: a clean Redis
                                                                   tmp_path):
    gate_port = free_port()
    # The operator token from a file (a secret volume), changed below without a restart.
    token_file = tmp_path / "operator-token"
    token_file.write_text("s3cret\n")
    env = Env(services, CLEARANCE_HTTP_TOKEN_FILE=str(token_file), CLEARANCE_GATE_PORT=str(gate_port))
    gate = subprocess.Popen([sys.executable, "-m", "streams.cli", "gate"],
                            env=env.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        env.start_worker()
        env.wait_assigned()
        rng = random.Random(3)
        a, b = (make_order(880000 + i, rng, prefix="GATE") for i in range(2))
        pub = Publisher(env.settings, "json", batch=1)
        pub.send([a, b])
        pub.flush()
        base = f"http://127.0.0.1:{gate_port}"
        wait_for(lambda: http("GET", f"{base}/scan/{a.logistics_no}")[1].get("answer") == "release")
        wait_for(lambda: http("GET", f"{base}/scan/{b.logistics_no}")[1].get("answer") == "release")

        code, out = http("POST", f"{base}/exit/{a.logistics_no}?gate=YP-01")
        assert code == 200 and out["result"] == "exited"
        assert http("POST", f"{base}/exit/{a.logistics_no}?gate=YP-02")[1]["result"] == "already_exited"
        assert http("GET", f"{base}/batch?area=4601XXXXWW")[1]["parcels"] == [b.logistics_no]

        # Cancel b before exit: the gate must answer hold.
        decisions = {orjson.loads(v)["orderNo"]: orjson.loads(v) for _, v in
                     Reader(env, registry.DECISIONS).read_until(lambda r: len(r) >= 2, 30)}
        pub.send_raw("623", b.order_no, to_json("623", [cancel_document(b, decisions[b.order_no]["invtNo"])]))
        pub.flush()
        wait_for(lambda: http("GET", f"{base}/scan/{b.logistics_no}")[1].get("answer") == "hold")
        assert http("POST", f"{base}/exit/{b.logistics_no}?gate=YP-01")[1]["result"] == "refused"

        # Guarantee: a guarantor with no room holds the next list; a top-up releases it.
        assert env.cli("guarantee", "set", "4601XXXXBB", "0.01").returncode == 0
        c = make_order(880010, rng, prefix="GATE")
        pub.send([c])
        pub.flush()
        held = wait_for(lambda: [orjson.loads(v) for _, v in Reader(env, registry.DECISIONS).drain(0.5)
                                 if c.order_no.encode() in v])
        assert held[0]["status"] == 599
        assert http("GET", f"{base}/scan/{c.logistics_no}")[1]["answer"] == "unknown"
        topup = env.cli("guarantee", "topup", "4601XXXXBB", "100000")
        assert topup.returncode == 0 and "held lists" in topup.stdout
        wait_for(lambda: http("GET", f"{base}/scan/{c.logistics_no}")[1].get("answer") == "release")

        report = env.cli("tax", "report")
        assert report.returncode == 0 and "4601XXXXBB" in report.stdout
        # a and b charged, b's cancel reversed, c charged after the top-up: four
        # records. A fresh reader may need more than a second for its first fetch
        # on a loaded broker, so wait for them before looking for stragglers.
        tax_reader = Reader(env, registry.TAX)
        tax_reader.read_until(lambda r: len(r) >= 4, 30)
        taxes = [orjson.loads(v) for _, v in tax_reader.drain(1.0)]
        assert len(taxes) == 4
        total = sum(t["cents"]["taxTotal"] for t in taxes)
        assert f"{total / 100:.2f}" in report.stdout

        worker = f"http://127.0.0.1:{env.workers[0][1]}"
        assert http("GET", f"{worker}/trace/{a.logistics_no}")[0] == 401
        code, t = http("GET", f"{worker}/trace/{a.logistics_no}", {"Authorization": "Bearer s3cret"})
        assert code == 200 and t["orderNo"] == a.order_no and t["parcel"]["gate"] == "YP-01"
        fresh = tmp_path / "operator-token.new"
        fresh.write_text("n3w-token\n")
        fresh.replace(token_file)
        wait_for(lambda: http("GET", f"{worker}/trace/{a.logistics_no}",
                              {"Authorization": "Bearer n3w-token"})[0] == 200, timeout=10)
        assert http("GET", f"{worker}/trace/{a.logistics_no}", {"Authorization": "Bearer s3cret"})[0] == 401
        assert re.search(r"^clearance_token_files_valid 1\.0$", env.metrics(0), re.M)
        cli = env.cli("trace", b.order_no)
        assert cli.returncode == 0 and "parcel cancelled" in cli.stdout and "(cancel)" in cli.stdout

        # The gate service's own metrics: what it applied and answered, no waybill number.
        code, health = http("GET", f"{base}/health")
        assert (code, health["status"], health["assigned"]) == (200, "ok", env.settings.partitions)
        assert 0 <= health["loopAgeSeconds"] < 30  # the consumer loop turns (it waits 0.2 s per fetch)

        def gate_metrics() -> dict:
            from prometheus_client.parser import text_string_to_metric_families

            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            assert a.logistics_no not in text and b.logistics_no not in text
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for family in text_string_to_metric_families(text) for s in family.samples}

        def lag_read(sample: dict) -> bool:  # every partition's lag read, and none behind
            lag = [v for (name, _), v in sample.items() if name == "clearance_gate_release_lag_records"]
            return len(lag) == env.settings.partitions and not any(lag)

        got = wait_for(lambda: (lambda g: g if lag_read(g) else None)(gate_metrics()), timeout=30)
        for (name, labels), value in {
            ("clearance_gate_exits_total", (("result", "exited"),)): 1,
            ("clearance_gate_exits_total", (("result", "already_exited"),)): 1,
            ("clearance_gate_exits_total", (("result", "refused"),)): 1,
            ("clearance_gate_exit_events_total", (("result", "acknowledged"),)): 1,
            ("clearance_gate_release_events_total", (("result", "releasable"),)): 3,  # a, b, c after the top-up
            ("clearance_gate_release_events_total", (("result", "revoked"),)): 1,  # b's cancel
            ("clearance_gate_requests_total", (("code", "200"), ("route", "exit"))): 3,
            ("clearance_gate_requests_total", (("code", "200"), ("route", "batch"))): 1,
        }.items():
            assert got.get((name, labels)) == value, (name, labels)
        assert got[("clearance_gate_scans_total", (("answer", "release"),))] >= 3
        # The group of its zone (CLEARANCE_GATE_GROUP), not the default every zone would share.
        group = env.env["CLEARANCE_GATE_GROUP"]
        assert group != "clearance-gate"
        assert got[("clearance_gate_info", (("group", group), ("redis_namespace", "clr"),
                                            ("topic_prefix", env.settings.topic_prefix),
                                            ("version", __version__)))] == 1
        # The loop's heartbeat is the wall clock of its last turn.
        assert abs(time.time() - got[("clearance_gate_consumer_heartbeat_timestamp_seconds", ())]) < 30
        top = env.cli("top", "--once", "--interval", "1", worker, base)
        assert top.returncode == 0, top.stderr
        assert "clearance workers" in top.stdout and "clearance gates" in top.stdout
        assert f"127.0.0.1:{gate_port}" in top.stdout
    finally:
        os.killpg(gate.pid, signal.SIGTERM)
        gate.wait(10)
        env.stop()
        import redis

        from streams import state

        redis.Redis.from_url(redis_url).delete(*state.guarantee_keys("4601XXXXBB"))  # no account for later tests


def test_the_gate_service_sends_an_exit_event_the_broker_did_not_take(services, redis_url):
    """A gate recorded an exit while its broker was unreachable: the parcel left
    and the event was owed. The gate service's sweep sends it, once."""
    import dataclasses
    import uuid

    from streams import state
    from streams.gate import Gate

    env = Env(services, CLEARANCE_GATE_EXIT_RESEND_S="0")
    ln = f"YT{uuid.uuid4().hex[:12].upper()}"
    cut_off = Gate(dataclasses.replace(env.settings, kafka_bootstrap=f"127.0.0.1:{free_port()}"))
    cut_off.flush_s = 0.5
    cut_off.record([{"logisticsNo": ln, "orderNo": "ORDER-1", "invtNo": "INVT-1", "areaCode": "4601XXXXWW",
                     "billNo": "", "releasedAt": 1}])
    try:
        out = cut_off.exit(ln, "G9")
    finally:
        cut_off.close()
    assert out["result"] == "exited" and out["eventPending"] is True
    assert orjson.loads(env.cli("exits-owed").stdout) == {"owed": 1}
    reader = Reader(env, registry.EXITS)
    gate = subprocess.Popen([sys.executable, "-m", "streams.cli", "gate"], env=env.env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        reader.read_until(lambda records: records, timeout=60)
        (key, value), = reader.drain(6.0)  # a sweep every 5 s: the next one finds nothing owed
        assert key == ln and orjson.loads(value) == {"logisticsNo": ln, "gate": "G9", "exitedAt": out["exitedAt"],
                                                     "orderNo": "ORDER-1", "invtNo": "INVT-1",
                                                     "areaCode": "4601XXXXWW"}
        r = state.sync_client_for(env.settings)
        assert r.zscore(cut_off.outbox(ln), ln) is None
        assert orjson.loads(env.cli("exits-owed").stdout) == {"owed": 0}
    finally:
        os.killpg(gate.pid, signal.SIGTERM)
        gate.wait(15)
        reader.close()


def test_an_operator_sends_the_exit_events_owed_from_the_command_line(services, redis_url):
    import dataclasses
    import uuid

    from streams.gate import Gate

    env = Env(services)
    numbers = [f"YT{uuid.uuid4().hex[:12].upper()}" for _ in range(3)]
    cut_off = Gate(dataclasses.replace(env.settings, kafka_bootstrap=f"127.0.0.1:{free_port()}"))
    cut_off.flush_s = 0.5
    cut_off.record([{"logisticsNo": ln, "orderNo": f"O-{i}", "invtNo": f"I-{i}", "areaCode": "4601XXXXWW",
                     "billNo": "", "releasedAt": 1} for i, ln in enumerate(numbers)])
    try:
        out = cut_off.batch_exit("4601XXXXWW", "G2")
    finally:
        cut_off.close()
    assert sorted(out["exited"]) == sorted(numbers)
    # Sent at once, though younger than CLEARANCE_GATE_EXIT_RESEND_S: no gate service is sending them.
    assert orjson.loads(env.cli("exits-owed", "--send").stdout) == {"owed": 3, "sent": 3, "owedAfter": 0}
    reader = Reader(env, registry.EXITS)
    assert sorted(k for k, _ in reader.read_until(lambda rs: len(rs) >= 3, timeout=30)) == sorted(numbers)
    reader.close()


def test_the_gate_service_serves_https_and_takes_a_renewed_certificate(services, redis_url, tmp_path):
    """`clearance gate` with CLEARANCE_GATE_TLS_*: HTTPS on its port, the
    certificate's expiry and the files' state on /metrics, and a certificate
    renewed in place served to the next connection without a restart."""
    import shutil
    import socket
    import ssl

    from streams.tls import expiry
    from tests.conftest import FIXTURES

    tls_dir = FIXTURES / "tls"
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    for source, target in (("broker.pem", cert), ("broker.key", key)):
        shutil.copy(tls_dir / source, target)
    key.chmod(0o600)
    gate_port = free_port()
    env = Env(services, CLEARANCE_GATE_PORT=str(gate_port), CLEARANCE_GATE_TLS_CERTFILE=str(cert),
              CLEARANCE_GATE_TLS_KEYFILE=str(key))
    gate = subprocess.Popen([sys.executable, "-m", "streams.cli", "gate"], env=env.env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    trusted = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))

    def metrics() -> str:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{gate_port}/metrics", timeout=5,
                                        context=trusted) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def sample(text: str, series: str) -> float | None:
        found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
        return float(found.group(1)) if found else None

    def served() -> bytes:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", gate_port), timeout=5) as raw, \
                ctx.wrap_socket(raw) as conn:
            return conn.getpeercert(binary_form=True)

    try:
        text = wait_for(metrics)
        assert sample(text, 'clearance_tls_certificate_expiry_timestamp_seconds{certificate="gate_api"}') == \
            expiry(cert.read_text())
        assert sample(text, "clearance_gate_tls_files_valid") == 1
        # Renewed: a new key and certificate, swapped in one after the other.
        for source, target in (("gate-yp01.key", key), ("gate-yp01.pem", cert)):
            shutil.copy(tls_dir / source, tmp_path / "next")
            os.replace(tmp_path / "next", target)
        renewed = ssl.PEM_cert_to_DER_cert((tls_dir / "gate-yp01.pem").read_text())
        assert wait_for(lambda: served() == renewed, timeout=10)
        assert gate.poll() is None
    finally:
        os.killpg(gate.pid, signal.SIGTERM)
        gate.wait(15)
