"""Reference warehouse-gate service.

* consumes `clearance.release` (confluent-kafka, its own group) and keeps each
  parcel's state in Redis by waybill number — releasable, exited, cancelled,
  returned — so several gate processes agree; a replayed or duplicated release
  event changes nothing, and a revocation (cancel before exit) holds it;
* answers a scan (release / hold / unknown) and records an exit once, with an
  exit event on `clearance.exit`, owed in an outbox in Redis from the moment
  the exit is recorded until the broker acknowledges it (sent again by the
  service's sweep after a broker or gate failure);
* lists the releasable parcels of an area (and bill) not yet exited, and exits
  such a batch in one call (分批出区).

HTTP (`--http-port`): GET /scan/<logisticsNo>, POST /exit/<logisticsNo>?gate=G,
GET /batch?area=A[&bill=B], POST /batch/exit?area=A&gate=G[&bill=B]; GET
/metrics (the gate's own registry, streams/metrics.py) and GET /health (503
"stalled" while the consumer loop has not turned for STALL_S).
"""
from __future__ import annotations

import collections
import json
import logging
import signal
import ssl
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from confluent_kafka import KafkaException
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from config.settings import Settings, SettingsError
from streams import metrics as m
from streams import state
from streams.auth import FilesValid, GateTokens, SharedToken
from streams.tls import ServerCertificate, export_expiry
from streams.lag import LagBook, drop_series
from topics import registry

log = logging.getLogger("clearance.gate")

# PARCEL_RELEASE's reply, as clearance_gate_release_events_total counts it:
# 1 newly releasable, -1 held with another list's parcel, 0 known already.
_RELEASE_RESULT = {1: "releasable", -1: "conflict", 0: "duplicate"}
# How often a gate service looks for exit events owed (Settings.gate_exit_resend_s
# says how old one must be to be sent again).
PENDING_SWEEP_S = 5.0
# A 503 (Redis unreachable, or the API busy) tells the gate to ask again after this.
RETRY_AFTER_S = 1
# How long a gate's connection waits for its next request (HTTP/1.1
# keep-alive), and the largest request body read past (no route takes one).
DEFAULT_KEEPALIVE_S = 5.0
MAX_BODY_BYTES = 64 * 1024
# The consumer loop turns at least every 0.2 s, and every call it makes is
# bounded (consume 0.2 s, flush and committed offsets 2 s; it also turns between
# tries while Redis is unreachable): a loop not seen for this long is stuck,
# and /health says so for a supervisor to restart the service.
STALL_S = 30.0


class Gate:
    """Gate operations on Redis, shared by the consumer, the HTTP API and the CLI."""

    def __init__(self, settings: Settings):
        self.settings = settings
        # How long an exit waits for the broker to take its event before it is
        # answered with the event still owed (the outbox sends it later).
        self.flush_s = 2.0
        # Events the broker acknowledged, whoever's flush or poll heard it: their
        # outbox entries are removed by the next settle().
        self._acked: collections.deque[str] = collections.deque()
        # Set when a wait for the broker ended with events not acknowledged, and
        # cleared by the next acknowledgement heard: meanwhile exits do not wait
        # for the broker at all (their events are queued, and owed in the outbox
        # as always), so an outage does not cost every parcel at the gate flush_s.
        self.broker_away = False
        self.r = state.sync_client_for(settings)
        self.s = state.AfterScripts(self.r)
        self._producer: Any = None

    @property
    def producer(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(self.settings.librdkafka_config())
        return self._producer

    def close(self) -> None:
        """Wait briefly for events in flight, settle their outbox entries, and close
        the producer; what is still undelivered stays owed in the outbox."""
        if self._producer is None:
            return
        self._producer.flush(self.flush_s)
        try:
            self.settle()
        except RedisError as exc:
            log.warning("exit outbox not updated at close (%s)", type(exc).__name__)
        self._producer.purge()
        self._producer.close()
        self._producer = None

    def key(self, logistics_no: str) -> str:
        return state.parcel_key(logistics_no, self.settings.redis_buckets)

    def scan(self, logistics_no: str) -> dict[str, Any]:
        fields = {k.decode(): v.decode() for k, v in self.r.hgetall(self.key(logistics_no)).items()}
        st = fields.get("state")
        answer = "unknown" if st is None else ("release" if st == "releasable" else "hold")
        m.GATE_SCANS.labels(answer).inc()
        return {"logisticsNo": logistics_no, "answer": answer, "state": st or "unknown",
                **{k: v for k, v in fields.items() if k != "state"}}

    def record(self, events: list[dict[str, Any]]) -> int:
        """Apply release and revocation events; returns how many parcels became releasable."""
        pipe = state.script_pipeline(self.r)
        now = int(time.time() * 1000)
        releases = []  # (event, index of its release script's reply in the pipeline)
        revocations = []  # likewise, of its cancel script's reply
        for ev in events:
            ln = ev.get("logisticsNo")
            if not ln:
                continue
            if ev.get("status") == "revoked":
                revocations.append((ev, len(pipe)))
                self.s.cancel(keys=[self.key(ln)], args=[ev.get("revokedAt", now), ev.get("orderNo", ""),
                                                          self.settings.decided_ttl_s, ev.get("invtNo", "")],
                              client=pipe)
                continue
            releases.append((ev, len(pipe)))
            self.s.release(keys=[self.key(ln)], args=[ev.get("orderNo", ""), ev.get("invtNo", ""),
                                                       ev.get("areaCode", ""), ev.get("billNo", ""),
                                                       ev.get("releasedAt", 0), now], client=pipe)
        results = pipe.execute()
        outcome = [results[i] for _ev, i in releases]
        new = 0
        pipe = self.r.pipeline(transaction=False)
        for (ev, _i), res in zip(releases, outcome):
            m.GATE_RELEASE_EVENTS.labels(_RELEASE_RESULT.get(res, "duplicate")).inc()
            if res == 1:
                new += 1
                pipe.sadd(state.area_key(ev.get("areaCode") or "-"), ev["logisticsNo"])
            elif res == -1:
                log.warning("parcel %s: list %s was released with a waybill number another list's parcel holds; "
                            "both are held until one of the lists is cancelled", ev["logisticsNo"], ev.get("invtNo"))
        for ev, i in revocations:
            m.GATE_RELEASE_EVENTS.labels("revoked").inc()
            for op, area in state.cancel_area_moves(results[i], ev.get("areaCode", "")):
                pipe.execute_command(op, area, ev["logisticsNo"])
            new += int(results[i][0]) == 2  # the other list's parcel, in conflict with it, may leave now
        if new:
            pipe.incrby(state.released_count_key(), new)
        pipe.execute()
        return new

    def outbox(self, logistics_no: str) -> str:
        return state.exit_outbox_key(state.bucket_of(logistics_no, self.settings.redis_buckets))

    def exit(self, logistics_no: str, gate: str) -> dict[str, Any]:
        return self._exits([logistics_no], gate)[0]

    def _exits(self, numbers: list[str], gate: str) -> list[dict[str, Any]]:
        """Record these parcels' exits, then send the events they owe together
        (one wait for the broker, however many parcels)."""
        now = int(time.time() * 1000)
        pipe = state.script_pipeline(self.r)
        for ln in numbers:
            self.s.exit(keys=[self.key(ln), self.outbox(ln)], args=[gate, now, self.settings.decided_ttl_s, ln],
                        client=pipe)
        out = []
        for ln, reply in zip(numbers, pipe.execute() if numbers else []):
            code, st = int(reply[0]), reply[1].decode()
            if code == 1:
                out.append({"logisticsNo": ln, "result": "exited", "gate": gate, "exitedAt": now})
            elif code == 0:
                out.append({"logisticsNo": ln, "result": "already_exited", "gate": reply[2].decode(),
                            "exitedAt": int(reply[3])})
            else:
                out.append({"logisticsNo": ln, "result": "refused", "state": st})
        for o in out:
            m.GATE_EXITS.labels(o["result"]).inc()
        exited = [o for o in out if o["result"] == "exited"]
        if exited:
            # The exits are recorded, and with them the events they owe (PARCEL_EXIT):
            # the parcels have left whether or not the broker takes the events now.
            acked = self._publish([o["logisticsNo"] for o in exited], self.flush_s)
            for o in exited:
                if o["logisticsNo"] not in acked:
                    log.warning("parcel %s exited; its exit event is not on the broker yet and stays in the "
                                "outbox until it is (Gate.publish_pending)", o["logisticsNo"])
                    o["eventPending"] = True
        return out

    def _publish(self, numbers: list[str], flush_s: float) -> set[str]:
        """Send the exit events of these exited parcels, built from their records;
        each leaves the outbox once the broker acknowledges it. Returns those
        acknowledged within `flush_s`."""
        topic = registry.topic_name(registry.EXITS, self.settings)
        acked: list[str] = []
        failed: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            ln = msg.key().decode()
            if err is not None:
                failed.append(ln)
                m.GATE_EXIT_EVENTS.labels("failed").inc()
            else:
                acked.append(ln)
                self._acked.append(ln)
                self.broker_away = False
                m.GATE_EXIT_EVENTS.labels("acknowledged").inc()

        pipe = self.r.pipeline(transaction=False)
        for ln in numbers:
            pipe.hgetall(self.key(ln))
        records = pipe.execute() if numbers else []
        done = self.r.pipeline(transaction=False)  # outbox and area sets, once the broker has answered
        sent = 0
        for i, (ln, raw) in enumerate(zip(numbers, records)):
            info = {k.decode(): v.decode() for k, v in raw.items()}
            if "exitedAt" not in info:  # gone with its retention, or never exited: nothing is owed
                log.warning("exit outbox: parcel %s has no exit on record (%s); dropped from the outbox",
                            ln, info.get("state", "unknown"))
                done.zrem(self.outbox(ln), ln)
                continue
            # The parcel has left its area's releasable set: again here in case
            # the process that recorded the exit stopped before it said so.
            done.srem(state.area_key(info.get("areaCode") or "-"), ln)
            event = {"logisticsNo": ln, "gate": info.get("gate"), "exitedAt": int(info["exitedAt"]),
                     "orderNo": info.get("orderNo"), "invtNo": info.get("invtNo"), "areaCode": info.get("areaCode")}
            try:
                self.producer.produce(topic, orjson.dumps(event), ln.encode(), on_delivery=delivered)
            except (BufferError, KafkaException) as exc:  # the rest stay owed, for the next sweep
                log.warning("exit events not queued (%s); %d stay in the outbox", exc, len(numbers) - i)
                m.GATE_EXIT_EVENTS.labels("not_queued").inc(len(numbers) - i)
                m.GATE_DEPENDENCY_ERRORS.labels("broker").inc()
                break
            sent += 1
        if sent and self.broker_away:
            self.producer.poll(0)  # whatever it has heard since; the rest is heard by later polls
        elif sent:
            self.producer.flush(flush_s)
            if len(acked) < sent:
                self.broker_away = True
        for ln in failed:
            log.warning("exit event of %s not delivered; it stays in the outbox", ln)
        self.settle(done)
        return set(acked)

    def settle(self, pipe: Any = None) -> None:
        """Take out of the outbox every event the broker has acknowledged so far,
        also those acknowledged after their own request stopped waiting (heard
        by a later flush, or by the service's poll), in one round trip."""
        pipe = pipe if pipe is not None else self.r.pipeline(transaction=False)
        while True:
            try:
                ln = self._acked.popleft()
            except IndexError:
                break
            pipe.zrem(self.outbox(ln), ln)
        if len(pipe):
            pipe.execute()

    def publish_pending(self, older_than_ms: int | None = None, limit: int = 500) -> int:
        """Send the exit events still owed (the broker was down, or the process
        that recorded the exit stopped before its event was acknowledged) for
        exits at least `older_than_ms` old, so a request still flushing its own
        is left to it. Several gate processes may sweep: each claims what it
        sends for another `older_than_ms`. An event may so be sent twice, never
        lost: consumers take (logisticsNo, exitedAt) as its identity.
        Returns how many were acknowledged."""
        if older_than_ms is None:
            older_than_ms = int(self.settings.gate_exit_resend_s * 1000)
        now = int(time.time() * 1000)
        sent = 0
        for key in state.exit_outbox_keys(self.settings.redis_buckets):
            due = [ln.decode() for ln in self.s.exit_claim(keys=[key], args=[now - older_than_ms, now, limit])]
            if due:
                m.GATE_EXIT_EVENTS_RESENT.inc(len(due))
                n = len(self._publish(due, self.flush_s))
                log.warning("exit outbox: %d of %d exit events owed were sent again", n, len(due))
                sent += n
        return sent

    def pending_exits(self) -> int:
        """Exit events not yet acknowledged by the broker."""
        return sum(int(self.r.zcard(key)) for key in state.exit_outbox_keys(self.settings.redis_buckets))

    def batch(self, area: str, bill: str = "") -> list[str]:
        """Releasable parcels of an area (and bill) that have not exited."""
        members = sorted(m.decode() for m in self.r.smembers(state.area_key(area or "-")))
        pipe = self.r.pipeline(transaction=False)
        for ln in members:
            pipe.hmget(self.key(ln), "state", "billNo")
        out = []
        for ln, (st, bill_no) in zip(members, pipe.execute() if members else []):
            if st == b"releasable" and (not bill or (bill_no or b"").decode() == bill):
                out.append(ln)
        return out

    def batch_exit(self, area: str, gate: str, bill: str = "") -> dict[str, Any]:
        results = self._exits(self.batch(area, bill), gate)
        return {"area": area, "bill": bill, "gate": gate,
                "exited": [r["logisticsNo"] for r in results if r["result"] == "exited"],
                "skipped": [r for r in results if r["result"] != "exited"]}


def route_of(method: str, path: str) -> str:
    """The `route` label of a request: one of a fixed few, never the waybill
    number or anything else a client put in the path."""
    path = urllib.parse.urlparse(path).path
    if method == "GET":
        if path.startswith("/scan/"):
            return "scan"
        return {"/batch": "batch", "/metrics": "metrics", "/health": "health"}.get(path, "other")
    if method == "POST":
        if path.startswith("/exit/"):
            return "exit"
        return "batch_exit" if path == "/batch/exit" else "other"
    return "other"


def tls_context(settings: Settings) -> ServerCertificate | None:
    """The gate API's own TLS (CLEARANCE_GATE_TLS_*), None without a
    certificate: read again when renewed (streams/tls.py). Files that do not
    load at start (a CRL file holding anything but CRLs, say) stop it with
    one line, as a setting that cannot work does; the same load refuses them
    later, on a change."""
    if not settings.gate_tls_certfile:
        return None
    try:
        return ServerCertificate(settings.gate_tls_certfile, settings.gate_tls_keyfile,
                                 settings.gate_tls_key_password, settings.gate_tls_client_ca,
                                 on_reload=FilesValid(m.GATE_TLS_FILES_VALID).watcher("CLEARANCE_GATE_TLS"),
                                 expiry_gauge=m.GATE_TLS_CERT_EXPIRY, crl=settings.gate_tls_crl,
                                 crl_gauge=m.GATE_TLS_CRL_NEXT_UPDATE)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def certificate_gate(peercert: Any) -> str:
    """The gate a verified client certificate names: its subject's common name."""
    return next((value for rdn in (peercert or {}).get("subject", ()) for key, value in rdn
                 if key == "commonName"), "")


def serve_http(gate: Gate, port: int, host: str = "127.0.0.1", request_timeout_s: float = 15.0,
               health: Any = None, max_connections: int = 64,
               keepalive_s: float = DEFAULT_KEEPALIVE_S, tls: ServerCertificate | None = None) -> ThreadingHTTPServer:
    """The gate's HTTP API on a thread of its own. `health`: a callable giving
    more fields for /health (the service's consumer: partitions held, and
    "status" other than "ok" when its loop is stuck, answered 503).
    `keepalive_s`: how long a connection waits for its next request (HTTP/1.1
    persistent connections; 0: one request per connection, HTTP/1.0).
    `tls`: serve HTTPS (tls_context); a client certificate of its CA names
    the gate, as that gate's own token would."""
    certificates_name_gates = tls is not None and tls.verifies_clients
    # A malformed or unreadable list stops the start, not a request.
    valid = FilesValid(m.GATE_TOKENS_FILE_VALID)
    own_tokens = GateTokens.from_env(on_reload=valid.watcher("CLEARANCE_GATE_TOKENS_FILE"))
    shared = SharedToken("CLEARANCE_GATE_TOKEN", on_reload=valid.watcher("CLEARANCE_GATE_TOKEN_FILE"))
    scrape = SharedToken("CLEARANCE_METRICS_TOKEN", on_reload=valid.watcher("CLEARANCE_METRICS_TOKEN_FILE"))

    class Handler(BaseHTTPRequestHandler):
        # A connection that sends nothing, or a request a byte at a time, is
        # closed after this: each holds a thread, and a gate's request is small.
        timeout = request_timeout_s
        # A scanner asks again and again: on one connection (HTTP/1.1) it saves
        # a connection, a thread and, through a TLS proxy, a handshake per scan.
        protocol_version = "HTTP/1.1" if keepalive_s > 0 else "HTTP/1.0"
        # Each answer leaves in one write (flushed after each request), with
        # Nagle's algorithm off: on a kept connection, headers and body written
        # apart waited for the client's delayed ACK, 40 ms a scan.
        wbufsize = -1
        disable_nagle_algorithm = True

        def setup(self) -> None:
            if tls is not None:
                # Each connection with the context in force when it came, so a
                # renewed certificate serves the next connection. No I/O yet:
                # the handshake is handle()'s.
                self.request = tls.context().wrap_socket(self.request, server_side=True,
                                                         do_handshake_on_connect=False)
            super().setup()

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                if tls is not None:
                    self.request.close()  # the server closes the plain socket it gave, now detached

        def handle(self) -> None:
            self.close_connection = True
            self._cert_gate = ""
            if tls is not None:
                # The handshake here, on the connection's own thread and under
                # the request timeout, not in the accepting thread.
                try:
                    self.connection.do_handshake()
                except (ssl.SSLError, OSError) as exc:
                    log.info("gate API: TLS handshake refused (%s)", getattr(exc, "reason", None) or exc)
                    return
                self._cert_gate = certificate_gate(self.connection.getpeercert()) if certificates_name_gates else ""
            self.handle_one_request()
            while not self.close_connection:
                # Between requests a connection waits keepalive_s, not the
                # request timeout: idle, it still holds one of max_connections.
                self.connection.settimeout(keepalive_s)
                try:
                    if not self.rfile.peek(1):
                        return  # the client closed it
                except OSError:  # idle past keepalive_s (TimeoutError), or reset
                    return
                self.connection.settimeout(request_timeout_s)
                self.handle_one_request()

        def _skip_body(self) -> None:
            """Read what a request carries after its headers, which no route
            uses, so that the next request on the connection starts where it
            should; a body of unknown or large size closes the connection
            after the answer instead."""
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if 0 < length <= MAX_BODY_BYTES:
                self.rfile.read(length)
            elif length:
                self.close_connection = True

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self._reply(code, data, "application/json")

        def _reply(self, code: int, data: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            if code == 503:  # unavailable for now: when to ask again
                self.send_header("Retry-After", str(RETRY_AFTER_S))
            if self.protocol_version == "HTTP/1.1":  # say whether the connection stays open
                if self.close_connection and self.request_version == "HTTP/1.1":
                    self.send_header("Connection", "close")
                elif not self.close_connection and self.request_version == "HTTP/1.0":
                    self.send_header("Connection", "keep-alive")
            self.end_headers()
            self.wfile.write(data)
            self._code = code

        def log_message(self, *args: Any) -> None:  # no per-request log lines
            return None

        def _authorised(self) -> bool:
            """Whether the request carries a token the API takes; which gate it
            names, if it is one gate's own, is kept for _post (self._as_gate)."""
            self._as_gate = self._cert_gate  # a client certificate of the gates' CA names its gate
            if self._as_gate:
                return True
            if not shared.required and not own_tokens.required and not certificates_name_gates:
                return True
            header = self.headers.get("Authorization")
            if shared.accepts(header):
                return True  # the shared token: any gate
            self._as_gate = own_tokens.gate_of(header) or ""
            if self._as_gate:
                return True
            self._send(401, {"error": "missing or wrong bearer token"})
            return False

        def do_GET(self) -> None:  # noqa: N802
            self._answer(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._answer(self._post)

        def _answer(self, handle: Any) -> None:
            route = route_of(self.command, self.path)
            started = time.perf_counter()
            self._code = 0
            try:
                self._skip_body()
                self._respond(route, handle)
            finally:
                if self._code:  # not a client gone before its answer
                    m.GATE_REQUESTS.labels(route, str(self._code)).inc()
                    m.GATE_REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)

        def _respond(self, route: str, handle: Any) -> None:
            # A gate reads an answer it cannot get as "hold": say why, in JSON,
            # rather than close the connection on it.
            try:
                if route == "metrics":
                    self._metrics()
                elif route == "health":
                    body = {"status": "ok", **(health() if health else {})}
                    self._send(200 if body["status"] == "ok" else 503, body)
                elif self._authorised():
                    handle()
            except RedisError as exc:
                log.warning("gate API: Redis unavailable (%s)", type(exc).__name__)
                m.GATE_DEPENDENCY_ERRORS.labels("redis").inc()
                self._send(503, {"error": f"clearance state unavailable ({type(exc).__name__}); hold the parcel "
                                          "and ask again"})
            except Exception:
                log.exception("gate API: %s %s failed", self.command, self.path[:200])
                self._send(500, {"error": "internal error; hold the parcel and ask again"})

        def _metrics(self) -> None:
            # The workers' token: one scrape configuration for every clearance
            # process, and the gates' token stays with the gates.
            own_tokens.tokens()  # every token file looked at: the gauge below is current
            shared.refresh()
            if scrape.required and not scrape.accepts(self.headers.get("Authorization")):
                self._send(401, {"error": "missing or wrong bearer token"})
                return
            self._reply(200, generate_latest(m.GATE_REGISTRY), CONTENT_TYPE_LATEST)

        def _get(self) -> None:
            url = urllib.parse.urlparse(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            if url.path.startswith("/scan/"):
                self._send(200, gate.scan(urllib.parse.unquote(url.path[6:])))
            elif url.path == "/batch":
                self._send(200, {"area": q.get("area", ""), "parcels": gate.batch(q.get("area", ""), q.get("bill", ""))})
            else:
                self._send(404, {"error": "GET /scan/<logisticsNo> or /batch?area=A"})

        def _post(self) -> None:
            url = urllib.parse.urlparse(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            if not q.get("gate"):
                self._send(400, {"error": "gate=<gate id> is required"})
            elif self._as_gate and q["gate"] != self._as_gate:
                self._send(403, {"error": f"this token is gate {self._as_gate}'s: it records exits through that "
                                          "gate only"})
            elif url.path.startswith("/exit/"):
                self._send(200, gate.exit(urllib.parse.unquote(url.path[6:]), q["gate"]))
            elif url.path == "/batch/exit":
                self._send(200, gate.batch_exit(q.get("area", ""), q["gate"], q.get("bill", "")))
            else:
                self._send(404, {"error": "POST /exit/<logisticsNo>?gate=G or /batch/exit?area=A&gate=G"})

    server = _BoundedServer((host, port), Handler, max_connections, tls=tls is not None)
    threading.Thread(target=server.serve_forever, daemon=True, name="gate-http").start()
    return server


_BUSY = json.dumps({"error": "gate API busy; hold the parcel and ask again"}).encode()


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` at once: one more is
    answered 503 at once and closed, so a flood of connections (or slow
    clients, each held up to the request timeout) cannot exhaust the
    process's threads and memory."""

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int, tls: bool = False):
        self.slots = threading.BoundedSemaphore(max_connections)
        self.tls = tls
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            # Counted with the requests (its route unread), so the 5xx ratio the
            # gates' alert watches includes the connections turned away.
            m.GATE_REQUESTS.labels("unread", "503").inc()
            try:
                if self.tls:  # no answer without a handshake: closed
                    return
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Content-Length: %d\r\nRetry-After: %d\r\nConnection: close\r\n\r\n%s"
                                % (len(_BUSY), RETRY_AFTER_S, _BUSY))
            except OSError:
                pass
            finally:
                self.shutdown_request(request)
            return
        m.GATE_CONNECTIONS.inc()
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give the slot back here
            m.GATE_CONNECTIONS.dec()
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            m.GATE_CONNECTIONS.dec()
            self.slots.release()


_EVENT_TEXT = ("orderNo", "invtNo", "areaCode", "billNo", "status")
_EVENT_TIMES = ("releasedAt", "revokedAt")


def event_problem(ev: Any) -> str:
    """Why a record on the release topic cannot be applied ("" when it can): the
    worker writes that topic, but a gate trusts no record to be well formed."""
    if not isinstance(ev, dict):
        return "not a JSON object"
    ln = ev.get("logisticsNo")
    if not isinstance(ln, str) or not 0 < len(ln) <= 60 or not ln.isprintable():
        return "logisticsNo must be a waybill number (1-60 printable characters)"
    for f in _EVENT_TEXT:
        if f in ev and not isinstance(ev[f], (str, int)):
            return f"{f} must be text"
    for f in _EVENT_TIMES:
        if f in ev and (not isinstance(ev[f], int) or isinstance(ev[f], bool) or ev[f] < 0):
            return f"{f} must be a time in milliseconds"
    return ""


def _until_recorded(gate: Gate, events: list[dict[str, Any]], stop: dict[str, bool],
                    waiting: Any = None) -> int | None:
    """Apply the events, retrying while Redis is unreachable: nothing is
    committed before they are applied, and applying them twice changes nothing.
    None when told to stop first (the events are read again at the next start).
    `waiting` is called between tries (the lag gauges go on counting)."""
    backoff = 0.1
    while True:
        try:
            return gate.record(events)
        except RedisError as exc:
            if stop["flag"]:
                return None
            if waiting is not None:
                waiting()
            log.warning("gate: Redis unavailable (%s); %d release events wait, next try in %.1f s",
                        type(exc).__name__, len(events), backoff)
            m.GATE_DEPENDENCY_ERRORS.labels("redis").inc()
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


class Heartbeat:
    """The consumer loop's last turn: clearance_gate_consumer_heartbeat_timestamp_seconds
    for the alert, and /health's status for a supervisor. The HTTP API runs on
    threads of its own and answers while the loop is stuck, so without this a
    stuck loop would look healthy and its lag gauges would keep their last
    values (0, typically) while released parcels scan "unknown"."""

    def __init__(self, stall_s: float = STALL_S, clock: Any = time.monotonic) -> None:
        self.stall_s, self.clock = stall_s, clock
        self.beat()

    def beat(self) -> None:
        self.last = self.clock()
        m.GATE_HEARTBEAT.set(time.time())

    def health(self, assigned: int) -> dict[str, Any]:
        age = max(self.clock() - self.last, 0.0)
        return {"status": "ok" if age <= self.stall_s else "stalled", "assigned": assigned,
                "loopAgeSeconds": round(age, 1)}


class ReleaseLag:
    """How far this gate service trails the release topic, per partition, for
    clearance_gate_release_lag_{records,seconds}: while it trails, parcels
    already released scan "unknown" at the gates."""

    def __init__(self) -> None:
        self.applied_ms: dict[int, int] = {}  # partition -> timestamp of the newest record applied
        self.book = LagBook()
        self.assigned = 0
        self.next_update = 0.0

    def applied(self, msgs: list[Any]) -> None:
        for msg in msgs:
            ts = msg.timestamp()[1]
            if ts > 0:
                self.applied_ms[msg.partition()] = max(ts, self.applied_ms.get(msg.partition(), 0))

    def update(self, consumer: Any, every_s: float | None = None) -> None:
        """Read the lag again, at most every `every_s`: the committed offsets
        are one request to the broker, and they are what is applied (the
        consumer's position runs ahead of events read and not yet applied)."""
        if time.monotonic() < self.next_update:
            return
        self.next_update = time.monotonic() + (PENDING_SWEEP_S if every_s is None else every_s)
        now = int(time.time() * 1000)
        held = consumer.assignment()
        self.assigned = len(held)
        # applied_ms holds only what was applied since each partition was taken
        # (emptied when it goes): no baseline to pass.
        for gone in self.book.hold(now, (tp.partition for tp in held)):  # moved to another gate service
            drop_series((m.GATE_RELEASE_LAG, m.GATE_RELEASE_LAG_SECONDS), str(gone))
            self.applied_ms.pop(gone, None)
        for tp in consumer.committed(held, timeout=2.0) if held else []:
            # The end of the partition as the last fetch saw it: no request of its
            # own, so a broker outage does not stall the loop once per partition.
            low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high < 0:  # not fetched from yet
                continue
            done = tp.offset if tp.offset >= 0 else max(low, 0)  # nothing committed yet: from the start
            records, seconds = self.book.behind(tp.partition, now, high, done, self.applied_ms.get(tp.partition, 0))
            m.GATE_RELEASE_LAG.labels(str(tp.partition)).set(records)
            m.GATE_RELEASE_LAG_SECONDS.labels(str(tp.partition)).set(seconds)


def run_gate(settings: Settings, group: str = "clearance-gate", max_seconds: float | None = None,
             quiet: bool = False, http_port: int = 0, http_host: str = "127.0.0.1") -> int:
    from confluent_kafka import Consumer

    from streams import __version__

    # Told to stop from here on, during start-up too, the service closes its
    # consumer (leaving its group at once, not at the session timeout) and its API.
    stop = {"flag": False}

    def _stop(*_: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    gate = Gate(settings)
    lag = ReleaseLag()
    heartbeat = Heartbeat()
    m.GATE_INFO.labels(__version__, group, settings.topic_prefix, settings.redis_namespace).set(1)
    if settings.kafka_ssl_certfile:
        export_expiry(m.GATE_TLS_CERT_EXPIRY, "kafka_client", settings.kafka_ssl_certfile)
    server = serve_http(gate, http_port, http_host, health=lambda: heartbeat.health(lag.assigned),
                        max_connections=settings.gate_max_connections,
                        keepalive_s=settings.gate_keepalive_s, tls=tls_context(settings)) if http_port else None
    conf = settings.librdkafka_config()
    conf.update({"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": "false",
                 "session.timeout.ms": str(int(settings.session_timeout_s * 1000)), "fetch.wait.max.ms": "50"})
    consumer = Consumer(conf)
    consumer.subscribe([registry.topic_name(registry.RELEASE, settings)])
    if not quiet:
        scheme = "https" if settings.gate_tls_certfile else "http"
        api = (f"HTTP API on {scheme}://{http_host}:{server.server_address[1]} (/scan, /exit, /batch, /metrics, /health)"
               if server is not None else "no HTTP API (--http-port or CLEARANCE_GATE_PORT)")
        print(f"gate: consuming {registry.topic_name(registry.RELEASE, settings)} as group {group}; {api}",
              flush=True)

    def read_lag() -> None:
        heartbeat.beat()  # also between tries while Redis is unreachable: waiting is not stuck
        try:
            lag.update(consumer)
        except KafkaException as exc:
            log.warning("release lag not read (%s)", exc)

    started = time.monotonic()
    new_total = 0
    next_sweep = started
    try:
        while not stop["flag"] and (max_seconds is None or time.monotonic() - started < max_seconds):
            heartbeat.beat()
            if time.monotonic() >= next_sweep:  # exit events owed since a broker or gate failure
                next_sweep = time.monotonic() + PENDING_SWEEP_S
                try:
                    gate.publish_pending()
                except (RedisError, KafkaException) as exc:
                    log.warning("exit outbox sweep failed (%s); next try in %.0f s", exc, PENDING_SWEEP_S)
                    m.GATE_DEPENDENCY_ERRORS.labels("redis" if isinstance(exc, RedisError) else "broker").inc()
                read_lag()
            if gate._producer is not None:  # delivery reports of exits answered before their ack
                gate.producer.poll(0)
                try:
                    gate.settle()
                except RedisError as exc:  # left in the outbox: sent again, never lost
                    log.warning("exit outbox not updated (%s)", type(exc).__name__)
                    m.GATE_DEPENDENCY_ERRORS.labels("redis").inc()
            msgs = [rec for rec in consumer.consume(500, 0.2) if not rec.error()]
            if not msgs:
                continue
            events = []
            for msg in msgs:
                try:
                    ev = orjson.loads(msg.value() or b"")
                except orjson.JSONDecodeError:
                    ev = None
                why = event_problem(ev)
                if why:  # kept on the topic; the gate goes on with the rest
                    log.warning("ignoring release event at %s[%d]@%d: %s", msg.topic(), msg.partition(),
                                msg.offset(), why)
                    m.GATE_RELEASE_EVENTS.labels("ignored").inc()
                    continue
                events.append(ev)
            new = _until_recorded(gate, events, stop, read_lag)
            if new is None:
                break
            lag.applied(msgs)
            new_total += new
            consumer.commit(asynchronous=False)
            if not quiet and new:
                print(f"gate: {new} parcels releasable (+{len(events) - new} duplicates or revocations)", flush=True)
    finally:
        consumer.close()
        if server is not None:
            server.shutdown()
        gate.close()
    return new_total
