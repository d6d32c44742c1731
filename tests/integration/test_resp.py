"""The worker's batch client (streams/resp.py) on a real Redis: the same replies
as redis-py, errors raised after every reply is read, a connection the server
dropped replaced, credentials and database from the redis-py client, one
deadline per round trip."""
from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio as aioredis
from redis import exceptions

from streams import resp, state
from streams.embedded import free_port

SCRIPT = "return {KEYS[1], tonumber(ARGV[1]) * 2, false, {ARGV[2]}}"


def run(coro):
    return asyncio.run(coro)


def on(url: str, commands: list[tuple]) -> list:
    """One batch through a client made like the redis-py client of `url`."""
    async def go():
        client = resp.Client.like(aioredis.from_url(url))
        try:
            return await client.execute(commands)
        finally:
            await client.aclose()

    return run(go())


def test_replies_are_those_redis_py_gives(redis_url):
    sync = redis.Redis.from_url(redis_url)
    sha = sync.script_load(SCRIPT)
    sync.hset("h", mapping={"a": "1", "b": b"\x00\xff"})
    big = b"x" * 300_000  # a reply spread over several reads

    async def go():
        client = resp.Client.like(aioredis.from_url(redis_url))
        batch = resp.Batch(client)
        batch.evalsha(sha, 1, "k1", 21, "deep")
        batch.incrby("n", 5)
        batch.execute_command("HMGET", "h", "a", "missing", "b")
        batch.execute_command("SET", "big", big)
        batch.execute_command("GET", "big")
        assert len(batch) == 5
        replies = await batch.execute()
        assert len(batch) == 0
        await client.aclose()
        return replies

    assert run(go()) == [[b"k1", 42, None, [b"deep"]], 5, [b"1", None, b"\x00\xff"], b"OK", big]
    pipe = sync.pipeline(transaction=False)
    pipe.evalsha(sha, 1, "k1", 21, "deep")
    pipe.hmget("h", "a", "missing", "b")
    assert pipe.execute() == [[b"k1", 42, None, [b"deep"]], [b"1", None, b"\x00\xff"]]


def test_an_error_is_raised_after_every_reply_is_read_and_the_connection_stays_usable(redis_url):
    sync = redis.Redis.from_url(redis_url)
    sync.set("text", "not a number")

    async def go():
        client = resp.Client.like(aioredis.from_url(redis_url))
        with pytest.raises(exceptions.ResponseError, match="command 2 of the batch"):
            await client.execute([("INCRBY", "n", 1), ("INCRBY", "text", 1), ("INCRBY", "n", 1)])
        with pytest.raises(exceptions.NoScriptError):
            await client.execute([("EVALSHA", "0" * 40, 0)])
        replies = await client.execute([("INCRBY", "n", 1)])
        await client.aclose()
        return replies

    # The commands around the error ran, as in a redis-py pipeline; the next batch
    # on the same connection reads its own reply, not a leftover one.
    assert run(go()) == [3]


def test_a_connection_the_server_dropped_is_replaced(redis_url):
    sync = redis.Redis.from_url(redis_url)

    async def go():
        client = resp.Client.like(aioredis.from_url(redis_url))
        (first_id,) = await client.execute([("CLIENT", "ID")])
        sync.client_kill_filter(_id=first_id)  # a restart or the idle-client timeout does this
        (second_id,) = await client.execute([("CLIENT", "ID")])
        await client.aclose()
        return first_id, second_id

    first_id, second_id = run(go())
    assert second_id != first_id


def test_credentials_and_database_come_from_the_redis_py_client(redis_url):
    sync = redis.Redis.from_url(redis_url)
    sync.acl_setuser("clearance-test", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    u = urlsplit(redis_url)
    try:
        def as_user(password: str) -> list:
            return on(f"redis://clearance-test:{password}@{u.netloc}/5", [("SET", "where", "db5"), ("ACL", "WHOAMI")])

        assert as_user("s3cret") == [b"OK", b"clearance-test"]
        assert redis.Redis.from_url(f"redis://{u.netloc}/5").get("where") == b"db5"
        assert sync.get("where") is None
        with pytest.raises(exceptions.ResponseError, match="WRONGPASS"):
            as_user("wrong")
    finally:
        sync.acl_deluser("clearance-test")
        redis.Redis.from_url(f"redis://{u.netloc}/5").flushdb()


def test_a_redis_silent_for_longer_than_the_timeout_fails_the_batch(redis_url):
    # A script that keeps Redis busy for 0.6 s, against a 0.2 s limit.
    busy = "local t = redis.call('TIME') local s = t[1] * 1e6 + t[2] " \
           "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - s > 600000 return 1"

    async def go():
        client = resp.Client.like(aioredis.from_url(redis_url))
        client.timeout = 0.2
        with pytest.raises(exceptions.TimeoutError):
            await client.execute([("EVAL", busy, 0)])
        assert client._idle == []  # the connection with a reply still due is not reused
        await asyncio.sleep(0.6)
        client.timeout = 5
        replies = await client.execute([("PING",)])
        await client.aclose()
        return replies

    assert run(go()) == [b"PONG"]


def test_scripts_queue_on_a_batch_as_on_a_redis_py_pipeline(redis_url):
    async def go():
        r = aioredis.from_url(redis_url)
        scripts, client = state.Scripts(r), resp.Client.like(r)
        batch = resp.Batch(client)
        await scripts.confirm(keys=["clr:p:{o00}", "clr:o:{o00}:X", "clr:o:{o00}:X"], args=[60], client=batch)
        replies = await batch.execute()
        await client.aclose()
        await r.aclose()
        return replies

    assert run(go()) == [1]


def test_tls_as_the_redis_py_client_is_configured(redis_url):
    """rediss:// with the CA that signed the server's certificate, against the
    session's Redis behind a TLS listener (its own build has no TLS); a
    server another CA signed is refused."""
    from tests.conftest import FIXTURES
    from tests.integration.tls_front import TlsFront

    tls = FIXTURES / "tls"
    front = TlsFront(urlsplit(redis_url).port or 6379, str(tls / "broker.pem"), str(tls / "broker.key"), None,
                     free_port())
    try:
        def trusting(ca: Path) -> list:
            return on(f"rediss://127.0.0.1:{front.port}/0?ssl_ca_certs={ca}", [("SET", "over", "tls"), ("GET", "over")])

        assert trusting(tls / "ca.pem") == [b"OK", b"tls"]
        with pytest.raises(exceptions.ConnectionError, match="certificate verify failed"):
            trusting(tls / "other-ca.pem")  # a server the configured CA did not sign is refused
    finally:
        front.stop()


def test_a_reply_that_is_not_redis_protocol_is_a_redis_error():
    # A server that answers garbage (a wrong port, a proxy): the batch fails as a
    # Redis error (the worker's dependency metric says "redis"), not a crash.
    async def serve(reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()

    async def go():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = resp.Client("127.0.0.1", port)
        try:
            with pytest.raises(exceptions.RedisError):
                await client.execute([("PING",)])
            assert client._idle == []
        finally:
            server.close()
            await server.wait_closed()

    run(go())


@pytest.fixture
def primary_and_replica(tmp_path):
    """A Redis with one replica, both started here (the replica can be stopped)."""
    import time

    from streams import embedded

    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    url, primary = embedded.start_redis(str(tmp_path / "p"))
    replica_url, replica = embedded.start_redis(str(tmp_path / "r"))
    redis.Redis.from_url(url).config_set("repl-diskless-sync-delay", 0)  # the first sync at once
    redis.Redis.from_url(replica_url).execute_command("REPLICAOF", "127.0.0.1", urlsplit(url).port)
    deadline = time.monotonic() + 20
    while (redis.Redis.from_url(url).info("replication").get("slave0") or {}).get("state") != "online":
        assert time.monotonic() < deadline, "the replica did not come online"
        time.sleep(0.05)
    procs = [primary, replica]

    def restart_replica() -> None:
        """The stopped replica back on its port; returns once it is in sync."""
        procs.append(embedded.start_redis(str(tmp_path / "r"), port=urlsplit(replica_url).port)[1])
        redis.Redis.from_url(replica_url).execute_command("REPLICAOF", "127.0.0.1", urlsplit(url).port)
        deadline = time.monotonic() + 20
        while (redis.Redis.from_url(url).info("replication").get("slave0") or {}).get("state") != "online":
            assert time.monotonic() < deadline, "the replica did not come back online"
            time.sleep(0.05)

    yield url, replica_url, replica, restart_replica
    for proc in procs:
        proc.kill()
        proc.wait()


def test_required_replicas_hold_every_write_of_a_round_trip(primary_and_replica):
    url, replica_url, replica, _restart = primary_and_replica

    async def go(commands):
        client = resp.Client.like(aioredis.from_url(url))
        client.require_replicas(1, 2000)
        try:
            return await client.execute(commands)
        finally:
            await client.aclose()

    # Acknowledged by the replica: readable there the moment the batch returns.
    assert run(go([("SET", "k1", "a"), ("INCRBY", "n", 5)])) == [b"OK", 5]
    assert redis.Redis.from_url(replica_url).mget("k1", "n") == [b"a", b"5"]
    replica.kill()
    replica.wait()
    # The replica is gone: the write ran on the primary but the batch fails, to be retried.
    with pytest.raises(resp.ReplicationError, match="0 of 1 replica"):
        run(go([("SET", "k2", "b")]))
    assert redis.Redis.from_url(url).get("k2") == b"b"


def test_a_pipeline_that_requires_a_replica_decides_nothing_without_one(primary_and_replica):
    from streams.pipeline import Pipeline
    from tests.helpers import CaptureSink, doc_records, order, settings_for

    url, _replica_url, replica, restart_replica = primary_and_replica
    settings = settings_for(url, redis_wait_replicas=1, redis_wait_ms=2000)

    async def go(orders):
        client = state.async_client_for(settings)
        sink = CaptureSink()
        p = Pipeline(settings, client, sink)
        try:
            for o in orders:
                await p.process(doc_records(o))
        finally:
            await p.aclose()
            await client.aclose()
        return sink

    assert [d["orderNo"] for d in run(go([order(41)])).decisions()] == [order(41).order_no]
    replica.kill()
    replica.wait()
    sink = CaptureSink()
    with pytest.raises(resp.ReplicationError):
        sink = run(go([order(42)]))
    assert sink.records == []  # nothing decided, released or answered on writes that could be lost

    # The worker's retry loop holds the batch until a replica is back, then decides it once.
    async def retried() -> CaptureSink:
        from streams.app import process_until_done

        client = state.async_client_for(settings)
        sink = CaptureSink()
        p = Pipeline(settings, client, sink)
        try:
            task = asyncio.create_task(process_until_done(p, doc_records(order(42))))
            await asyncio.sleep(1.5)
            assert not task.done() and sink.records == []  # failing closed meanwhile
            await asyncio.to_thread(restart_replica)
            await asyncio.wait_for(task, 30)
        finally:
            await p.aclose()
            await client.aclose()
        return sink

    assert [d["orderNo"] for d in run(retried()).decisions()] == [order(42).order_no]
