"""The gate's HTTP API answers in JSON when it cannot answer: a gate must hold
a parcel it cannot clear, and should know why."""
from __future__ import annotations

import urllib.error
import urllib.request

import orjson

from config.settings import Settings
from streams.embedded import free_port
from streams.gate import Gate, serve_http


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, orjson.loads(err.read())


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
