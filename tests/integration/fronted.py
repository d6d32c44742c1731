"""The session's Redis, and a broker reachable only through a front on a port
of its own (tls_front.TlsFront, sasl_front.SaslFront): how a secured Kafka
cluster looks to the processes. The broker advertises the front's port."""
from __future__ import annotations

from typing import Any, Callable

from streams import embedded


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
