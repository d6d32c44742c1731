"""Fronts: listeners that stand in front of the embedded broker or Redis as
a secured cluster's listener does (tls_front.TlsFront, sasl_front.SaslFront),
and the services of a test whose broker is reachable only through one (it
advertises the front's port)."""
from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any, Callable

from streams import embedded


class Front:
    """A listener on `port` in a thread of its own, serving each connection
    with `_serve` (a subclass's), which forwards to `upstream_port`."""

    name = "front"
    tls: ssl.SSLContext | None = None

    def __init__(self, upstream_port: int, port: int):
        self.upstream_port, self.port = upstream_port, port
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError(f"{self.name} did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls))
        self.ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    @staticmethod
    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Bytes one way until either side closes."""
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            dst.close()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class FrontedServices:
    def __init__(self, redis_url: str, workdir: str, make_front: Callable[[int, int], Any]):
        front_port = embedded.free_port()
        self.kafka, self.proc = embedded.start_kafka(workdir, advertised_port=front_port)
        self.front = make_front(int(self.kafka.rsplit(":", 1)[1]), front_port)
        self.redis_url, self.bootstrap = redis_url, f"127.0.0.1:{front_port}"

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP": self.bootstrap, "REDIS_URL": self.redis_url, **embedded.dev_pii_env({})}

    def stop(self) -> None:
        self.front.stop()
        self.proc.terminate()
        self.proc.wait(10)


def assert_decides_and_releases(env: Any, fmt: str, prefix: str, seed: int) -> None:
    """A worker of `env` decides 20 published orders as expected and releases
    the clean ones, every client going through the front."""
    import orjson

    from streams.simulator import Publisher, generate
    from tests.integration.worker import Reader
    from topics import registry

    env.start_worker()
    env.wait_assigned()
    orders = list(generate(20, seed=seed, prefix=prefix))
    pub = Publisher(env.settings, fmt, batch=10)
    pub.send(orders)
    pub.flush()
    records = Reader(env, registry.DECISIONS).read_until(lambda r: len(r) >= len(orders), timeout=90)
    decided = {d["decisionId"]: d["status"] for d in (orjson.loads(v) for _, v in records)}
    assert decided == {f"{o.ebp_code}:{o.order_no}": o.expected_status for o in orders}
    released = {o.logistics_no for o in orders if o.expected_status == 800}
    assert released
    rel = Reader(env, registry.RELEASE).read_until(lambda r: len(r) >= len(released), timeout=30)
    assert {k for k, _ in rel} == released
