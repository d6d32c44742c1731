"""The gate's HTTP API answers in JSON when it cannot answer: a gate must hold
a parcel it cannot clear, and should know why."""
from __future__ import annotations

import http.client
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest

from config.settings import Settings
from streams.embedded import free_port
from streams.gate import Gate, route_of, serve_http


def _call(method: str, url: str, token: str = "") -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        if err.code == 503:  # unavailable for now: the gate is told when to ask again
            assert err.headers["Retry-After"] == "1"
        return err.code, orjson.loads(err.read())


def _get(url: str) -> tuple[int, dict]:
    return _call("GET", url)


def test_scans_answer_and_an_unreachable_redis_is_a_503_not_a_dropped_connection(redis_url):
    up = Gate(Settings(kafka_bootstrap="unused:1", redis_url=redis_url))
    down = Gate(Settings(kafka_bootstrap="unused:1", redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    servers = [serve_http(g, free_port()) for g in (up, down)]
    try:
        base_up, base_down = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        assert _get(f"{base_up}/scan/YT0001") == (200, {"logisticsNo": "YT0001", "answer": "unknown",
                                                        "state": "unknown"})
        code, body = _get(f"{base_down}/scan/YT0001")
        assert code == 503 and "hold the parcel" in body["error"] and "ConnectionError" in body["error"]
        code, body = _get(f"{base_down}/batch?area=A")
        assert code == 503
    finally:
        for s in servers:
            s.shutdown()


def test_a_redis_that_never_answers_is_a_503_after_the_socket_timeout_not_a_hung_scan():
    """A Redis frozen or cut off without a reset accepts a connection and says
    nothing: the scan must fail (503, hold the parcel) within the client's
    socket timeout, not hang its thread for ever (redis-py before 8 waits
    without limit unless told otherwise)."""
    import socket

    from streams import state

    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    held = []
    threading.Thread(target=lambda: held.extend(silent.accept() for _ in range(4)), daemon=True).start()
    gate = Gate(Settings(kafka_bootstrap="unused:1", redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0"))
    server = serve_http(gate, free_port())
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{server.server_address[1]}/scan/YT0001")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=4 * state.SOCKET_TIMEOUT_S)  # a hang fails here
        assert err.value.code == 503 and err.value.headers["Retry-After"] == "1"
        assert "TimeoutError" in orjson.loads(err.value.read())["error"]
    finally:
        server.shutdown()
        silent.close()
        for conn, _ in held:
            conn.close()


def test_health_is_503_stalled_while_the_consumer_loop_has_not_turned(redis_url):
    from streams.gate import Heartbeat

    now = [100.0]
    beat = Heartbeat(stall_s=30.0, clock=lambda: now[0])
    server = serve_http(Gate(Settings(kafka_bootstrap="unused:1", redis_url=redis_url)), free_port(),
                        health=lambda: beat.health(2))
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        now[0] = 120.0
        assert _get(f"{base}/health") == (200, {"status": "ok", "assigned": 2, "loopAgeSeconds": 20.0})
        now[0] = 131.0  # the loop last turned 31 s ago: a supervisor's probe restarts the service
        assert _get(f"{base}/health") == (503, {"status": "stalled", "assigned": 2, "loopAgeSeconds": 31.0})
        beat.beat()
        assert _get(f"{base}/health") == (200, {"status": "ok", "assigned": 2, "loopAgeSeconds": 0.0})
        # The API itself is not what stalled: scans go on being answered.
        assert _get(f"{base}/scan/YT0009")[0] == 200
    finally:
        server.shutdown()


def test_a_connection_that_sends_no_request_is_closed_and_the_api_goes_on(redis_url):
    import socket

    gate = Gate(Settings(kafka_bootstrap="unused:1", redis_url=redis_url))
    server = serve_http(gate, free_port(), request_timeout_s=0.5)
    try:
        port = server.server_address[1]
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        idle[0].sendall(b"GET /scan/YT")  # half a request line, then nothing
        for conn in idle:
            assert conn.recv(1024) == b""  # closed by the server (without its timeout, recv's 10 s run out)
            conn.close()
        assert _get(f"http://127.0.0.1:{port}/scan/YT0002")[0] == 200
    finally:
        server.shutdown()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _metrics(base: str, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"{base}/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_api_serves_its_own_metrics_counting_requests_by_route_never_by_waybill(redis_url, monkeypatch):
    monkeypatch.setenv("CLEARANCE_GATE_TOKEN", "gate-secret")
    up = Gate(Settings(kafka_bootstrap="unused:1", redis_url=redis_url))
    down = Gate(Settings(kafka_bootstrap="unused:1", redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    servers = [serve_http(up, free_port(), health=lambda: {"assigned": 3}), serve_http(down, free_port())]
    try:
        base_up, base_down = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        # The gates' token guards the API, not the scrape or the health check.
        code, before = _metrics(base_up)
        assert code == 200
        before = _samples(before)
        assert _call("GET", f"{base_up}/scan/YT0001SECRET", "gate-secret")[0] == 200
        assert _call("GET", f"{base_up}/scan/YT0002", "gate-secret")[0] == 200
        assert _call("GET", f"{base_up}/nowhere", "gate-secret")[0] == 404
        assert _call("GET", f"{base_up}/nowhere")[0] == 401  # no token: refused before routing
        assert _call("GET", f"{base_down}/scan/YT0003", "gate-secret")[0] == 503
        assert _get(f"{base_up}/health") == (200, {"status": "ok", "assigned": 3})

        code, text = _metrics(base_up)
        assert code == 200 and "YT0001SECRET" not in text
        after = _samples(text)

        def delta(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        assert delta("clearance_gate_requests_total", route="scan", code="200") == 2
        assert delta("clearance_gate_requests_total", route="scan", code="503") == 1
        assert delta("clearance_gate_requests_total", route="other", code="404") == 1
        assert delta("clearance_gate_requests_total", route="other", code="401") == 1
        assert delta("clearance_gate_requests_total", route="health", code="200") == 1
        assert delta("clearance_gate_request_duration_seconds_count", route="scan") == 3
        assert delta("clearance_gate_scans_total", answer="unknown") == 2
        assert delta("clearance_gate_dependency_errors_total", dependency="redis") == 1
        # The gate's registry only: no worker series (a gate's 0 would pull the workers' max() down).
        assert not [name for name, _ in after if not name.startswith("clearance_gate_")
                    and name.startswith("clearance_")]

        monkeypatch.setenv("CLEARANCE_METRICS_TOKEN", "scrape-secret")
        assert _metrics(base_up)[0] == 401
        assert _metrics(base_up, {"Authorization": "Bearer gate-secret"})[0] == 401
        assert _metrics(base_up, {"Authorization": "Bearer scrape-secret"})[0] == 200
    finally:
        for s in servers:
            s.shutdown()


@pytest.mark.parametrize("method, path, route", [
    ("GET", "/scan/YT1", "scan"), ("GET", "/scan/", "scan"), ("GET", "/batch?area=A", "batch"),
    ("GET", "/metrics", "metrics"), ("GET", "/health?x=1", "health"), ("GET", "/YT1", "other"),
    ("POST", "/exit/YT1?gate=G", "exit"), ("POST", "/batch/exit?area=A&gate=G", "batch_exit"),
    ("POST", "/metrics", "other"), ("PUT", "/exit/YT1", "other"), ("GET", "/batch/exit", "other"),
])
def test_a_request_is_labelled_by_its_route_alone(method, path, route):
    assert route_of(method, path) == route


def test_connections_beyond_the_limit_are_answered_busy_at_once_and_the_api_goes_on(redis_url):
    import socket

    from streams import metrics

    gate = Gate(Settings(kafka_bootstrap="unused:1", redis_url=redis_url))
    server = serve_http(gate, free_port(), request_timeout_s=2.0, max_connections=4)
    busy = metrics.GATE_REQUESTS.labels("unread", "503")
    refused = busy._value.get()
    try:
        port = server.server_address[1]
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(4)]
        for conn in held:
            conn.sendall(b"GET /scan/YT")  # half a request each: every slot taken
        code, body = _get(f"http://127.0.0.1:{port}/scan/YT0001")
        assert code == 503 and "busy" in body["error"] and "hold the parcel" in body["error"]
        assert busy._value.get() == refused + 1
        for conn in held:  # the request timeout frees the slots
            assert conn.recv(1024) == b""
            conn.close()
        # A slot is given back just after its connection is closed.
        deadline = time.monotonic() + 10
        while (code := _get(f"http://127.0.0.1:{port}/scan/YT0001")[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert code == 200
    finally:
        server.shutdown()


def test_a_gate_with_a_token_of_its_own_records_exits_in_its_own_name_only(redis_url, monkeypatch):
    monkeypatch.setenv("CLEARANCE_GATE_TOKENS", "YP-01=token-one, YP-02=token-two")
    gate = Gate(Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", redis_url=redis_url))
    gate.flush_s = 0.1  # no broker: the exits' events stay owed
    gate.record([{"logisticsNo": ln, "orderNo": "O", "invtNo": "I", "areaCode": "AREA-T", "billNo": "",
                  "releasedAt": 1} for ln in ("YT-TOK-1", "YT-TOK-2")])
    server = serve_http(gate, free_port())
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _call("GET", f"{base}/scan/YT-TOK-1")[0] == 401
        assert _call("GET", f"{base}/scan/YT-TOK-1", "token-three")[0] == 401
        assert _call("GET", f"{base}/scan/YT-TOK-1", "token-two")[1]["answer"] == "release"  # any gate may scan
        code, body = _call("POST", f"{base}/exit/YT-TOK-1?gate=YP-01", "token-two")
        assert code == 403 and "YP-02" in body["error"]
        assert _call("POST", f"{base}/batch/exit?area=AREA-T&gate=YP-01", "token-two")[0] == 403
        assert gate.scan("YT-TOK-1")["answer"] == "release"  # nothing recorded
        code, body = _call("POST", f"{base}/exit/YT-TOK-1?gate=YP-01", "token-one")
        assert code == 200 and body["result"] == "exited" and body["gate"] == "YP-01"
        code, body = _call("POST", f"{base}/batch/exit?area=AREA-T&gate=YP-02", "token-two")
        assert code == 200 and body["exited"] == ["YT-TOK-2"] and gate.scan("YT-TOK-2")["gate"] == "YP-02"
        # The shared token, where one is set as well, still acts for any gate.
        monkeypatch.setenv("CLEARANCE_GATE_TOKEN", "shared")
        assert _call("POST", f"{base}/exit/YT-TOK-1?gate=YP-09", "shared")[1]["result"] == "already_exited"
    finally:
        server.shutdown()
        gate.close()


@pytest.mark.parametrize("spec", ["YP-01", "YP-01=", "=secret", "YP-01=same,YP-02=same"])
def test_a_malformed_list_of_gate_tokens_stops_the_api_from_starting(spec, monkeypatch):
    monkeypatch.setenv("CLEARANCE_GATE_TOKENS", spec)
    with pytest.raises(ValueError, match="CLEARANCE_GATE_TOKENS") as err:
        serve_http(Gate(Settings(kafka_bootstrap="unused:1", redis_url="redis://127.0.0.1:1/0")), free_port())
    assert "secret" not in str(err.value)  # the message names the entry, never a token


def test_gate_tokens_from_a_file_change_without_a_restart(redis_url, monkeypatch, tmp_path):
    """Rotation as an operator does it: add the gate's new token, give it to
    the gate, remove the old one, each change replacing the file (as a secret
    volume does). A change that does not read is refused and the tokens before
    it stay; an emptied file refuses everyone rather than opening the API."""
    from streams import metrics

    path = tmp_path / "gate-tokens"

    def write(text: str) -> None:
        fresh = tmp_path / "gate-tokens.new"
        fresh.write_text(text)
        fresh.chmod(0o600)
        fresh.replace(path)

    write("# gates of Yangpu\nYP-01=old-one\nYP-02=two\n")
    monkeypatch.setenv("CLEARANCE_GATE_TOKENS_FILE", str(path))
    gate = Gate(Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", redis_url=redis_url))
    gate.flush_s = 0.1  # no broker: the exits' events stay owed
    gate.record([{"logisticsNo": "YT-ROT-1", "orderNo": "O", "invtNo": "I", "areaCode": "AREA-R", "billNo": "",
                  "releasedAt": 1}])
    server = serve_http(gate, free_port())
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def until(token: str, code: int) -> None:  # the file is looked at once a second
        deadline = time.monotonic() + 10
        while _call("GET", f"{base}/scan/YT-ROT-1", token)[0] != code and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _call("GET", f"{base}/scan/YT-ROT-1", token)[0] == code, token

    try:
        assert metrics.GATE_TOKENS_FILE_VALID._value.get() == 1
        assert _call("GET", f"{base}/scan/YT-ROT-1", "old-one")[0] == 200
        assert _call("GET", f"{base}/scan/YT-ROT-1", "new-one")[0] == 401
        write("YP-01=old-one\nYP-01=new-one\nYP-02=two\n")  # both of YP-01's while it changes over
        until("new-one", 200)
        assert _call("GET", f"{base}/scan/YT-ROT-1", "old-one")[0] == 200
        assert _call("POST", f"{base}/exit/YT-ROT-1?gate=YP-02", "new-one")[0] == 403  # still YP-01's alone
        write("YP-01=new-one\nYP-02=two\n")
        until("old-one", 401)
        # A change that does not read (two gates, one token) is refused: the tokens before it stay.
        write("YP-01=new-one\nYP-02=new-one\n")
        deadline = time.monotonic() + 10
        while metrics.GATE_TOKENS_FILE_VALID._value.get() != 0 and time.monotonic() < deadline:
            _call("GET", f"{base}/scan/YT-ROT-1", "two")
            time.sleep(0.1)
        assert metrics.GATE_TOKENS_FILE_VALID._value.get() == 0
        assert _call("GET", f"{base}/scan/YT-ROT-1", "two")[0] == 200
        assert _call("POST", f"{base}/exit/YT-ROT-1?gate=YP-02", "new-one")[0] == 403
        write("")  # emptied: no gate's token, and the API does not open
        until("new-one", 401)
        assert metrics.GATE_TOKENS_FILE_VALID._value.get() == 1
        assert _call("GET", f"{base}/scan/YT-ROT-1")[0] == 401
        write("YP-01=new-one\n")
        until("new-one", 200)
        code, body = _call("POST", f"{base}/exit/YT-ROT-1?gate=YP-01", "new-one")
        assert code == 200 and body["result"] == "exited"
    finally:
        server.shutdown()
        gate.close()


def test_a_tokens_file_that_cannot_be_read_stops_the_start(monkeypatch, tmp_path):
    monkeypatch.setenv("CLEARANCE_GATE_TOKENS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="CLEARANCE_GATE_TOKENS_FILE .*missing"):
        serve_http(Gate(Settings(kafka_bootstrap="unused:1", redis_url="redis://127.0.0.1:1/0")), free_port())
    (tmp_path / "bad").write_text("YP-01=a\nYP-02\n")
    monkeypatch.setenv("CLEARANCE_GATE_TOKENS_FILE", str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="entry 2 is not GATE=TOKEN"):
        serve_http(Gate(Settings(kafka_bootstrap="unused:1", redis_url="redis://127.0.0.1:1/0")), free_port())
    # `clearance gate` says so and exits 1, before it looks for a broker or Redis.
    import os
    import subprocess
    import sys

    from pathlib import Path

    run = subprocess.run([sys.executable, "-m", "streams.cli", "gate"], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2],
                         env=dict(os.environ, CLEARANCE_GATE_TOKENS_FILE=str(tmp_path / "bad")))
    assert run.returncode == 1 and "entry 2 is not GATE=TOKEN" in run.stderr


def test_the_shared_gate_token_and_the_metrics_token_change_through_their_files(redis_url, monkeypatch, tmp_path):
    """Each file holds the tokens taken, one per line: a new one is added
    beside the old while clients change over, then the old removed, with no
    restart; an emptied file keeps the token in force (the API stays shut)."""
    from streams import metrics

    files = {"gate": tmp_path / "gate-token", "metrics": tmp_path / "metrics-token"}

    def write(which: str, text: str) -> None:
        fresh = tmp_path / f"{which}.new"
        fresh.write_text(text)
        fresh.chmod(0o600)
        fresh.replace(files[which])

    write("gate", "gate-old\n")
    write("metrics", "scrape-old\n")
    monkeypatch.setenv("CLEARANCE_GATE_TOKEN_FILE", str(files["gate"]))
    monkeypatch.setenv("CLEARANCE_METRICS_TOKEN_FILE", str(files["metrics"]))
    gate = Gate(Settings(kafka_bootstrap="unused:1", redis_url=redis_url))
    server = serve_http(gate, free_port())
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def until(check, expected) -> None:  # the files are looked at once a second
        deadline = time.monotonic() + 10
        while check() != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert check() == expected

    def scan(token: str) -> int:
        return _call("GET", f"{base}/scan/YT-SHARED-1", token)[0]

    def scrape(token: str) -> int:
        return _metrics(base, {"Authorization": f"Bearer {token}"})[0]

    try:
        assert (scan("gate-old"), scan("gate-new"), scan(""), scan("scrape-old")) == (200, 401, 401, 401)
        assert (scrape("scrape-old"), scrape("gate-old"), _metrics(base)[0]) == (200, 401, 401)
        write("gate", "gate-old\ngate-new\n")
        write("metrics", "scrape-old\nscrape-new\n")
        until(lambda: (scan("gate-new"), scrape("scrape-new")), (200, 200))
        assert (scan("gate-old"), scrape("scrape-old")) == (200, 200)
        write("gate", "gate-new\n")
        write("metrics", "scrape-new\n")
        until(lambda: (scan("gate-old"), scrape("scrape-old")), (401, 401))
        write("gate", "\n")  # refused: the token in force stays, the API does not open
        # A scrape looks at every token file, so the gauge is current while no gate asks.
        until(lambda: (scrape("scrape-new"), metrics.GATE_TOKENS_FILE_VALID._value.get()), (200, 0))
        assert (scan("gate-new"), scan("")) == (200, 401)
        write("gate", "gate-newer\n")
        until(lambda: scan("gate-newer"), 200)
        assert metrics.GATE_TOKENS_FILE_VALID._value.get() == 1 and scan("gate-new") == 401
    finally:
        server.shutdown()
        gate.close()


def _read_response(sock) -> tuple[bytes, dict[str, str], bytes]:
    """One HTTP response off a raw socket: status line, headers, body (by Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before a whole response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(4096)
    return status.encode(), headers, rest


def test_a_gate_asks_again_and_again_on_one_connection_until_it_idles(redis_url):
    """HTTP/1.1 persistent connections: scans and exits, pipelined or one by
    one, a body the API does not use read past, and the connection closed by
    the server once idle for the keep-alive time."""
    import socket

    gate = Gate(Settings(kafka_bootstrap="unused:1", redis_url=redis_url))
    gate.flush_s = 0.1  # no broker: the exit's event stays owed
    gate.record([{"logisticsNo": f"YT-KA-{i}", "orderNo": "O", "invtNo": "I", "areaCode": "AREA-KA", "billNo": "",
                  "releasedAt": 1} for i in range(3)])
    server = serve_http(gate, free_port(), keepalive_s=0.5, max_connections=2)
    try:
        port = server.server_address[1]
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = b'{"note": "a body no route reads"}'
        # Two requests in one write (pipelined), then a POST with a body, then a GET: four answers, one connection.
        sock.sendall(b"GET /scan/YT-KA-0 HTTP/1.1\r\nHost: g\r\n\r\nGET /scan/YT-KA-1 HTTP/1.1\r\nHost: g\r\n\r\n")
        for n in (0, 1):
            status, headers, got = _read_response(sock)
            assert status.startswith(b"HTTP/1.1 200") and b'"release"' in got and "connection" not in headers
        sock.sendall(b"POST /exit/YT-KA-0?gate=YP-01 HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        status, _, got = _read_response(sock)
        assert status.startswith(b"HTTP/1.1 200") and b'"exited"' in got
        sock.sendall(b"GET /scan/YT-KA-0 HTTP/1.1\r\nHost: g\r\n\r\n")
        status, _, got = _read_response(sock)
        assert status.startswith(b"HTTP/1.1 200") and orjson.loads(got)["answer"] == "hold"  # it left: not again
        # Idle past the keep-alive time: the server closes it, and its slot is free again.
        started = time.monotonic()
        assert sock.recv(1024) == b"" and time.monotonic() - started < 5
        sock.close()
        # Two clients at once on a limit of two: neither is turned away while each keeps its connection.
        from streams import metrics

        # The gauge is the process's: wait until other tests' servers have closed theirs (a request timeout at most).
        deadline = time.monotonic() + 20
        while metrics.GATE_CONNECTIONS._value.get() and time.monotonic() < deadline:
            time.sleep(0.1)
        open_before = metrics.GATE_CONNECTIONS._value.get()
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(2)]
        for _ in range(3):
            for c in conns:
                c.request("GET", "/scan/YT-KA-2")
                resp = c.getresponse()
                assert resp.status == 200 and b'"release"' in resp.read()
        first = [c.sock for c in conns]
        for c in conns:
            c.request("GET", "/scan/YT-KA-2")
            c.getresponse().read()
        assert [c.sock for c in conns] == first  # the same connections throughout
        assert metrics.GATE_CONNECTIONS._value.get() == open_before + 2  # held while idle between requests
        for c in conns:
            c.close()
        deadline = time.monotonic() + 5
        while metrics.GATE_CONNECTIONS._value.get() > open_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metrics.GATE_CONNECTIONS._value.get() == open_before
    finally:
        server.shutdown()


@pytest.mark.parametrize("case", ["client_says_close", "chunked_body", "keepalive_off"])
def test_a_connection_the_api_does_not_keep_is_said_to_close_and_closed(redis_url, case):
    import socket

    gate = Gate(Settings(kafka_bootstrap="unused:1", redis_url=redis_url))
    server = serve_http(gate, free_port(), keepalive_s=0 if case == "keepalive_off" else 30)
    try:
        sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
        request = {"client_says_close": b"GET /scan/YT-NONE HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
                   # A body of unknown length is not read: the connection ends after the answer.
                   "chunked_body": b"POST /exit/YT-NONE?gate=YP-01 HTTP/1.1\r\nHost: g\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                   "keepalive_off": b"GET /scan/YT-NONE HTTP/1.1\r\nHost: g\r\n\r\n"}[case]
        sock.sendall(request)
        status, headers, got = _read_response(sock)
        assert b" 200 " in status and orjson.loads(got)["answer" if b"scan" in request[:20] else "result"]
        if case == "keepalive_off":
            assert status.startswith(b"HTTP/1.0")
        else:
            assert status.startswith(b"HTTP/1.1") and headers["connection"] == "close"
        assert sock.recv(1024) == b""  # closed at once, not after the 30 s keep-alive
        sock.close()
    finally:
        server.shutdown()


def _tls_gate_api(redis_url: str, tag: str, **tls_env: str) -> tuple[Gate, Any]:
    """A gate holding two releasable parcels (YT-<tag>-0 and -1, no broker:
    their exits' events stay owed) and its API over TLS as the settings say."""
    from config.settings import load_settings
    from streams.gate import tls_context

    settings = load_settings({"REDIS_URL": redis_url, "KAFKA_BOOTSTRAP": "unused:1", **tls_env})
    gate = Gate(settings)
    gate.flush_s = 0.1
    gate.record([{"logisticsNo": f"YT-{tag}-{i}", "orderNo": "O", "invtNo": "I", "areaCode": f"AREA-{tag}",
                  "billNo": "", "releasedAt": 1} for i in range(2)])
    return gate, serve_http(gate, free_port(), tls=tls_context(settings), request_timeout_s=2.0)


def test_the_api_serves_tls_and_a_gates_certificate_names_its_gate(redis_url, monkeypatch):
    """HTTPS without a proxy: a client certificate of the gates' CA (CN YP-01)
    acts as YP-01's own token; without one a token is still taken; a
    certificate of another CA, or plain HTTP, gets no answer."""
    import socket
    import ssl

    from tests.conftest import FIXTURES

    tls_dir = FIXTURES / "tls"
    monkeypatch.setenv("CLEARANCE_GATE_TOKEN", "shared-token")
    gate, server = _tls_gate_api(redis_url, "TLS", CLEARANCE_GATE_TLS_CERTFILE=str(tls_dir / "broker.pem"),
                                 CLEARANCE_GATE_TLS_KEYFILE=str(tls_dir / "broker.key"),
                                 CLEARANCE_GATE_TLS_CLIENT_CA=str(tls_dir / "ca.pem"))
    port = server.server_address[1]

    def client(cert: str | None = None) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
        if cert:
            ctx.load_cert_chain(str(tls_dir / f"{cert}.pem"), str(tls_dir / f"{cert}.key"))
        return http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)

    def call(conn, method: str, path: str, token: str = "") -> tuple[int, dict]:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())

    try:
        as_gate = client("gate-yp01")
        assert call(as_gate, "GET", "/scan/YT-TLS-0") == (200, {**gate.scan("YT-TLS-0")})
        code, body = call(as_gate, "POST", "/exit/YT-TLS-0?gate=YP-02")
        assert code == 403 and "YP-01" in body["error"]  # its certificate names YP-01 alone
        code, body = call(as_gate, "POST", "/exit/YT-TLS-0?gate=YP-01")
        assert code == 200 and body["result"] == "exited" and body["gate"] == "YP-01"
        as_gate.close()
        anonymous = client()
        assert call(anonymous, "GET", "/scan/YT-TLS-1")[0] == 401  # neither a certificate nor a token
        assert call(anonymous, "GET", "/scan/YT-TLS-1", "shared-token")[0] == 200
        assert call(anonymous, "GET", "/health")[0] == 200
        anonymous.close()
        # A certificate that names YP-01 but that another CA issued: refused at the handshake.
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            call(client("stranger"), "GET", "/scan/YT-TLS-1")
        # Plain HTTP on the TLS port: no answer, and the API goes on.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
            try:
                answer = plain.recv(1024)
            except ConnectionResetError:  # closed with the request unread
                answer = b""
            assert not answer.startswith(b"HTTP/")
        assert call(client("gate-yp01"), "GET", "/scan/YT-TLS-1")[0] == 200
    finally:
        server.shutdown()
        gate.close()


def test_gate_tls_settings_that_cannot_work_stop_the_start():
    from config.settings import SettingsError, load_settings
    from tests.conftest import FIXTURES

    tls_dir = FIXTURES / "tls"
    with pytest.raises(SettingsError, match="go with CLEARANCE_GATE_TLS_CERTFILE"):
        load_settings({"CLEARANCE_GATE_TLS_CLIENT_CA": str(tls_dir / "ca.pem")})
    with pytest.raises(SettingsError, match="CLEARANCE_GATE_TLS_CERTFILE .*does not belong"):
        load_settings({"CLEARANCE_GATE_TLS_CERTFILE": str(tls_dir / "broker.pem"),
                       "CLEARANCE_GATE_TLS_KEYFILE": str(tls_dir / "worker.key")})
    with pytest.raises(SettingsError, match="CLEARANCE_GATE_TLS_CLIENT_CA .*no such file"):
        load_settings({"CLEARANCE_GATE_TLS_CERTFILE": str(tls_dir / "broker.pem"),
                       "CLEARANCE_GATE_TLS_KEYFILE": str(tls_dir / "broker.key"),
                       "CLEARANCE_GATE_TLS_CLIENT_CA": "/nonexistent/ca.pem"})


def test_a_renewed_certificate_and_client_ca_are_served_without_a_restart(redis_url, tmp_path, monkeypatch):
    """cert-manager or certbot renews the files in place: the next connection
    gets the new certificate, a connection already open goes on, a half-done
    change (a new certificate beside the old key) is refused until its key
    arrives, and a new client CA decides which gates' certificates count."""
    import os
    import shutil
    import socket
    import ssl

    from streams import metrics as m
    from streams.auth import FilesValid
    from streams.tls import ServerCertificate, expiry
    from tests.conftest import FIXTURES

    tls_dir = FIXTURES / "tls"
    files = {"cert": tmp_path / "tls.crt", "key": tmp_path / "tls.key", "ca": tmp_path / "ca.crt"}

    def put(name: str, source: str) -> None:  # as a secret volume does: a new file swapped in
        shutil.copy(tls_dir / source, tmp_path / "next")
        os.chmod(tmp_path / "next", 0o600)
        os.replace(tmp_path / "next", files[name])

    put("cert", "broker.pem"), put("key", "broker.key"), put("ca", "ca.pem")
    monkeypatch.setenv("CLEARANCE_GATE_TOKEN", "shared-token")
    gate = Gate(Settings(kafka_bootstrap="unused:1", redis_url=redis_url))
    gate.flush_s = 0.1  # no broker: the exits' events stay owed
    gate.record([{"logisticsNo": "YT-RENEW-0", "orderNo": "O", "invtNo": "I", "areaCode": "AREA-RENEW",
                  "billNo": "", "releasedAt": 1}])
    tls = ServerCertificate(str(files["cert"]), str(files["key"]), "", str(files["ca"]),
                            on_reload=FilesValid(m.GATE_TLS_FILES_VALID).watcher("CLEARANCE_GATE_TLS"),
                            expiry_gauge=m.GATE_TLS_CERT_EXPIRY, check_every_s=0)
    server = serve_http(gate, free_port(), tls=tls, request_timeout_s=2.0, keepalive_s=30)
    port = server.server_address[1]

    def served() -> bytes:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # which certificate, trusted or not
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            return conn.getpeercert(binary_form=True)

    def der(name: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert((tls_dir / name).read_text())

    def scan_as(cert: str, ca: str) -> int:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.load_cert_chain(str(tls_dir / f"{cert}.pem"), str(tls_dir / f"{cert}.key"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        try:
            conn.request("POST", "/exit/YT-RENEW-0?gate=YP-01")
            return conn.getresponse().status
        finally:
            conn.close()

    def gauge(name: str, **labels: str) -> float | None:
        return m.GATE_REGISTRY.get_sample_value(name, labels)

    try:
        assert served() == der("broker.pem")
        assert gauge("clearance_tls_certificate_expiry_timestamp_seconds", certificate="gate_api") == \
            expiry((tls_dir / "broker.pem").read_text())
        kept = http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                           context=ssl.create_default_context(cafile=str(tls_dir / "ca.pem")))
        kept.request("GET", "/health")
        assert kept.getresponse().read()

        put("cert", "worker.pem")  # the new certificate, its key not yet there
        assert served() == der("broker.pem")
        assert gauge("clearance_gate_tls_files_valid") == 0
        put("key", "worker.key")
        assert served() == der("worker.pem")
        assert gauge("clearance_gate_tls_files_valid") == 1
        kept.request("GET", "/health")  # made with the old certificate, and kept
        assert kept.getresponse().status == 200
        kept.close()

        assert scan_as("gate-yp01", "ca") == 200
        put("ca", "other-ca.pem")  # the gates' certificates now come from another CA
        assert scan_as("stranger", "other-ca") == 200
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            scan_as("gate-yp01", "ca")
    finally:
        server.shutdown()
        gate.close()


def test_a_certificates_expiry_is_read_from_its_pem():
    """The expiry exported is the certificate's notAfter (checked against
    OpenSSL's own reading), of the first certificate of a chain."""
    import ssl

    from streams.tls import expiry
    from tests.conftest import FIXTURES

    for name in ("broker.pem", "stranger.pem", "ca.pem"):
        path = FIXTURES / "tls" / name
        assert expiry(path.read_text()) == ssl.cert_time_to_seconds(ssl._ssl._test_decode_cert(str(path))["notAfter"])
    chain = (FIXTURES / "tls" / "stranger.pem").read_text() + (FIXTURES / "tls" / "broker.pem").read_text()
    assert expiry(chain) == expiry((FIXTURES / "tls" / "stranger.pem").read_text())
    for bad in ("", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"):
        with pytest.raises(ValueError):
            expiry(bad)


def test_a_revoked_gate_certificate_is_refused_once_its_crl_is_published(redis_url, tmp_path, monkeypatch):
    """A lost or stolen scanner: its CA revokes its certificate and publishes
    a new CRL (CLEARANCE_GATE_TLS_CRL); the gate service reads it within a
    second and the revoked certificate fails the handshake, while the other
    gates' go on. Settings that would trust the wrong thing stop the start."""
    import datetime as dt
    import os
    import shutil
    import ssl

    from config.settings import SettingsError, load_settings
    from streams import metrics as m
    from streams.gate import tls_context
    from tests.conftest import FIXTURES

    tls_dir = FIXTURES / "tls"
    crl = tmp_path / "gates.crl"
    shutil.copy(tls_dir / "gates-crl-empty.pem", crl)
    monkeypatch.setenv("CLEARANCE_GATE_TOKEN", "shared-token")
    env = {"CLEARANCE_GATE_TLS_CERTFILE": str(tls_dir / "broker.pem"),
           "CLEARANCE_GATE_TLS_KEYFILE": str(tls_dir / "broker.key"),
           "CLEARANCE_GATE_TLS_CLIENT_CA": str(tls_dir / "gates-ca.pem"), "CLEARANCE_GATE_TLS_CRL": str(crl)}
    gate, server = _tls_gate_api(redis_url, "CRL", **env)
    port = server.server_address[1]

    def exit_as(gate_id: str) -> int:
        ctx = ssl.create_default_context(cafile=str(tls_dir / "ca.pem"))
        name = gate_id.lower().replace("-", "")
        ctx.load_cert_chain(str(tls_dir / f"gate-{name}.pem"), str(tls_dir / f"gate-{name}.key"))
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
        try:
            conn.request("POST", f"/exit/YT-CRL-{gate_id[-1]}?gate={gate_id}")
            return conn.getresponse().status
        except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected):
            return 0  # refused at the handshake
        finally:
            conn.close()

    try:
        assert exit_as("YP-03") == 200
        next_update = dt.datetime(2126, 11, 14, 3, 34, 43, tzinfo=dt.timezone.utc).timestamp()
        assert m.GATE_REGISTRY.get_sample_value("clearance_gate_tls_crl_next_update_timestamp_seconds") == next_update
        shutil.copy(tls_dir / "gates-crl-yp03.pem", tmp_path / "next")
        os.replace(tmp_path / "next", crl)  # published: YP-03 revoked
        deadline = time.monotonic() + 10
        while exit_as("YP-03") != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert exit_as("YP-03") == 0
        assert exit_as("YP-02") == 200
    finally:
        server.shutdown()
        gate.close()
    with pytest.raises(SettingsError, match="goes with CLEARANCE_GATE_TLS_CLIENT_CA"):
        load_settings({k: v for k, v in env.items() if k != "CLEARANCE_GATE_TLS_CLIENT_CA"})
    # Only CRLs in that file: a certificate there would be trusted as a gates' CA.
    mixed = tmp_path / "mixed.crl"
    mixed.write_text((tls_dir / "gates-crl-empty.pem").read_text() + (tls_dir / "other-ca.pem").read_text())
    for wrong, why in ((mixed, "holds something besides CRLs"), (tls_dir / "other-ca.pem", "holds no PEM X509 CRL")):
        with pytest.raises(SettingsError, match=why):
            tls_context(load_settings(dict(env, CLEARANCE_GATE_TLS_CRL=str(wrong))))


def test_a_crls_next_update_is_read_and_anything_else_is_refused():
    from streams.tls import crl_next_update
    from tests.conftest import FIXTURES

    tls_dir = FIXTURES / "tls"
    empty, revoking = ((tls_dir / n).read_text() for n in ("gates-crl-empty.pem", "gates-crl-yp03.pem"))
    assert crl_next_update(empty) == crl_next_update(revoking) == crl_next_update(empty + revoking)
    for bad in ("", (tls_dir / "ca.pem").read_text(), empty + (tls_dir / "ca.pem").read_text(),
                "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"):
        with pytest.raises(ValueError):
            crl_next_update(bad)
