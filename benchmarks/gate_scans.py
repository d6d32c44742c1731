"""What a scan costs through the gate's HTTP API, on the embedded Redis:
`GET /scan/<logisticsNo>` of releasable parcels by C concurrent clients, one
connection per request, or with --keep-alive one connection per client kept
for all its requests (HTTP/1.1), three rounds after a warm-up. The latency a
gate sees, from its request to the answer read. The API runs in a process of
its own, as in production, so the clients' threads do not compete with it
for the interpreter lock.

--tls: HTTPS, the clients showing a gate's client certificate (the test
fixtures' CA, tests/fixtures/tls), each connection paying its handshake.

Usage: python -m benchmarks.gate_scans [REQUESTS] [CLIENTS] [--keep-alive] [--tls]   (default 3000, 8)
"""
from __future__ import annotations

import dataclasses
import http.client
import multiprocessing
import ssl
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from config.settings import Settings
from streams import embedded
from streams.gate import Gate, serve_http, tls_context

TLS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tls"


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    keep_alive = "--keep-alive" in sys.argv[1:]
    tls = "--tls" in sys.argv[1:]
    client_tls = None
    if tls:
        client_tls = ssl.create_default_context(cafile=str(TLS / "ca.pem"))
        client_tls.load_cert_chain(str(TLS / "gate-yp01.pem"), str(TLS / "gate-yp01.key"))
    n = int(args[0]) if args else 3000
    clients = int(args[1]) if len(args) > 1 else 8
    kept = threading.local()  # --keep-alive: each client thread's connection
    svc = embedded.start(kafka_bootstrap="unused:1")  # scans need no broker
    try:
        g = Gate(Settings(kafka_bootstrap="unused:1", redis_url=svc.redis_url))
        g.record([{"logisticsNo": f"YT{i:06d}", "orderNo": f"O{i}", "invtNo": f"I{i}", "areaCode": "A1",
                   "billNo": "", "releasedAt": 1} for i in range(n)])
        port = embedded.free_port()
        api = multiprocessing.get_context("fork").Process(target=_serve, args=(svc.redis_url, port, clients * 2, tls),
                                                          daemon=True)
        api.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

        def scan(i: int) -> float:
            t = time.perf_counter()
            conn = getattr(kept, "conn", None) or (
                http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=client_tls) if tls else
                http.client.HTTPConnection("127.0.0.1", port, timeout=10))
            conn.request("GET", f"/scan/YT{i:06d}")
            resp = conn.getresponse()
            body = resp.read()
            if keep_alive:
                kept.conn = conn  # http.client opens it again if the server closed it
            else:
                conn.close()
            if resp.status != 200 or b'"release"' not in body:
                raise RuntimeError(f"scan {i}: {resp.status} {body[:100]!r}")
            return time.perf_counter() - t

        with ThreadPoolExecutor(clients) as pool:
            for rnd in range(4):
                t = time.perf_counter()
                lat = sorted(pool.map(scan, range(n)))
                dt = time.perf_counter() - t
                q = statistics.quantiles(lat, n=100)
                print(f"round {rnd}{' (warm-up)' if rnd == 0 else ''}: {n / dt:,.0f} scans/s, "
                      f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms")
        api.terminate()
        api.join(10)
    finally:
        svc.stop()


def _serve(redis_url: str, port: int, max_connections: int, tls: bool = False) -> None:
    settings = Settings(kafka_bootstrap="unused:1", redis_url=redis_url)
    if tls:
        settings = dataclasses.replace(settings, gate_tls_certfile=str(TLS / "broker.pem"),
                                       gate_tls_keyfile=str(TLS / "broker.key"),
                                       gate_tls_client_ca=str(TLS / "ca.pem"))
    serve_http(Gate(settings), port, max_connections=max_connections, tls=tls_context(settings))
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
