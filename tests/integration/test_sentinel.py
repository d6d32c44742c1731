"""Redis under Sentinel (REDIS_SENTINELS): a primary, its replica and three
Sentinels on local ports. Every client asks the Sentinels for the primary,
and asks again after a failover; a worker goes on deciding through one."""
from __future__ import annotations

import asyncio

import orjson
import pytest
import redis

from config.settings import load_settings
from streams import embedded, resp, state
from streams.simulator import Publisher, generate
from tests.integration.worker import Env, Reader
from topics import registry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory):
    ls = embedded.LocalSentinel(str(tmp_path_factory.mktemp("sentinel")))
    yield ls
    ls.stop()


def _on(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port)


def test_every_client_follows_the_primary_the_sentinels_name_through_a_failover(sentinel):
    settings = load_settings(sentinel.env())
    assert not settings.embedded_redis
    sync = state.sync_client_for(settings)

    async def go() -> None:
        async_client = state.async_client_for(settings)
        batches = resp.Client.like(async_client)
        sync.set("sentinel:sync", "1")
        await async_client.set("sentinel:async", "1")
        assert await batches.execute([("SET", "sentinel:resp", "1"), ("GET", "sentinel:sync")]) == [b"OK", b"1"]
        old = sentinel.primary_port()
        assert {_on(old).get(k) for k in ("sentinel:sync", "sentinel:async", "sentinel:resp")} == {b"1"}

        new = sentinel.failover()
        assert new != old and _on(old).info("replication")["role"] == "slave"

        async def retried(call):  # as the worker retries a failed batch
            for _ in range(20):
                try:
                    return await call()
                except redis.RedisError:
                    await asyncio.sleep(0.25)
            return await call()

        await retried(lambda: batches.execute([("SET", "sentinel:resp", "2")]))
        await retried(lambda: async_client.set("sentinel:async", "2"))
        for _ in range(20):
            try:
                sync.set("sentinel:sync", "2")
                break
            except redis.RedisError:
                await asyncio.sleep(0.25)
        # Written on the new primary, not refused by (or lost on) the old one.
        assert {_on(new).get(k) for k in ("sentinel:sync", "sentinel:async", "sentinel:resp")} == {b"2"}
        await batches.aclose()
        await async_client.aclose()

    asyncio.run(go())


def test_a_connection_to_a_node_that_became_a_replica_is_dropped_on_its_readonly_answer(sentinel):
    # A connection made just before a failover answers READONLY from then on:
    # the batch fails (and is retried), and the next connection asks the
    # Sentinels again instead of going back to the replica.
    replica = next(p for p in sentinel.data_ports if p != sentinel.primary_port())
    addresses = [("127.0.0.1", replica), ("127.0.0.1", sentinel.primary_port())]

    async def go() -> None:
        async def primary() -> tuple[str, int]:
            return addresses.pop(0)

        script = "redis.call('SET', KEYS[1], ARGV[1]) return 1"
        sha = _on(sentinel.primary_port()).script_load(script)
        _on(replica).script_load(script)
        client = resp.Client()
        client.primary = primary
        with pytest.raises(redis.exceptions.ReadOnlyError):
            await client.execute([("SET", "sentinel:ro", "1")])
        with pytest.raises(redis.exceptions.ResponseError, match="READONLY"):
            await client.execute([("EVALSHA", sha, 1, "sentinel:ro", "1")])
        assert await client.execute([("EVALSHA", sha, 1, "sentinel:ro", "2")]) == [1]
        assert not addresses  # asked twice: after the READONLY answers it went to the primary
        await client.aclose()

    addresses.insert(0, ("127.0.0.1", replica))  # the script's try is on the replica too
    asyncio.run(go())
    assert _on(sentinel.primary_port()).get("sentinel:ro") == b"2"


class _SentinelServices:
    def __init__(self, services, sentinel):
        self.services, self.sentinel = services, sentinel

    def env(self) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP": self.services.kafka_bootstrap, **self.sentinel.env(),
                **embedded.dev_pii_env({})}


def test_a_worker_on_sentinel_decides_every_order_once_through_a_failover(services, sentinel):
    sentinel.flush()
    env = Env(_SentinelServices(services, sentinel), CLEARANCE_MATCH_TIMEOUT_S="60")
    try:
        env.start_worker()
        env.wait_assigned()
        orders = list(generate(60, seed=41, prefix="SENT", mix={"ok": 0.8, "buyer_not_payer": 0.2}))
        pub = Publisher(env.settings, "json", batch=10)
        reader = Reader(env, registry.DECISIONS)
        pub.send(orders[:30])
        pub.flush()
        reader.read_until(lambda r: len(r) >= 30, timeout=60)
        sentinel.failover()
        pub.send(orders[30:])
        pub.flush()
        records = reader.read_until(lambda r: len(r) >= len(orders), timeout=90)
        reader.drain(quiet_s=2)
        by_id: dict[str, list[int]] = {}
        for _, v in records:
            d = orjson.loads(v)
            by_id.setdefault(d["decisionId"], []).append(d["status"])
        assert by_id == {f"{o.ebp_code}:{o.order_no}": [o.expected_status] for o in orders}
        # The match state and the quota ledger are on the new primary.
        assert _on(sentinel.primary_port()).dbsize() > 0
    finally:
        env.stop()
