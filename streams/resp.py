"""The worker's batch round trips to Redis: a batch's commands in one write, the
replies parsed by hiredis in order, a time limit per read, not per reply.

redis-py's asyncio pipeline reads each reply under its own timeout context,
looks up a response callback per command and hands its connection back to the
pool through a shielded task; more than half of the samples py-spy took in it
were there, not in packing or parsing. The hot path queues only EVALSHA and
plain commands whose raw replies it reads itself, so it needs none of that:
4 % fewer instructions per document for the whole batch pipeline
(benchmarks/README.md, "Sixth session"). Everything else — script loading,
the timeout sweep's reads, the gate, the CLI — keeps redis-py; the address,
credentials and TLS settings are taken from the redis-py client, so both talk
to the same Redis the same way.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Any, Awaitable, Callable

import hiredis
from redis import exceptions
from redis.crc import key_slot

TIMEOUT_S = 5.0  # as every redis-py client's here (state.SOCKET_TIMEOUT_S)


def _reply_error(message: str) -> exceptions.ResponseError:
    if message.startswith("NOSCRIPT"):
        return exceptions.NoScriptError(message)
    if message.startswith("READONLY") or "-READONLY " in message:  # Redis 6 wraps it in a script's error
        return exceptions.ReadOnlyError(message)
    return exceptions.ResponseError(message)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.parser = hiredis.Reader(protocolError=exceptions.InvalidResponse, replyError=_reply_error)
        self.answered = False  # bytes came back in this round trip

    async def round_trip(self, packed: bytes, n: int, timeout: float | None) -> list[Any]:
        self.writer.write(packed)
        replies: list[Any] = []
        parser, read = self.parser, self.reader.read
        self.answered = False
        while len(replies) < n:
            reply = parser.gets()
            if reply is False:
                # The limit is on silence, not on the whole batch: a large batch
                # may keep Redis busy for a while, a dead Redis sends nothing.
                async with asyncio.timeout(timeout):
                    data = await read(1 << 16)
                if not data:
                    raise exceptions.ConnectionError("Redis closed the connection")
                self.answered = True
                parser.feed(data)
            else:
                replies.append(reply)
        return replies

    def close(self) -> None:
        self.writer.close()


class Client:
    """A few connections to one Redis, used for whole batches (one at a time each)."""

    def __init__(self, host: str = "localhost", port: int = 6379, db: int = 0, username: str | None = None,
                 password: str | None = None, path: str | None = None, tls: ssl.SSLContext | None = None,
                 timeout: float | None = TIMEOUT_S):
        self.host, self.port, self.db, self.path = host, port, db, path
        self.username, self.password, self.tls = username, password, tls
        self.timeout = timeout
        self.wait: tuple[int, int] | None = None  # (replicas, ms): require_replicas()
        self._idle: list[_Connection] = []
        # Under Sentinel: a coroutine giving the primary's (host, port) now.
        self.primary: Callable[[], Awaitable[tuple[str, int]]] | None = None

    def require_replicas(self, replicas: int, timeout_ms: int) -> None:
        """End every round trip with WAIT: its writes count only once `replicas`
        replicas have them. Redis replicates asynchronously, so a write that a
        primary acknowledged can be lost when a replica takes its place; with
        this, a batch whose writes did not reach enough replicas within
        `timeout_ms` fails (ReplicationError) and is retried, and its offsets
        are not committed."""
        self.wait = (replicas, timeout_ms) if replicas > 0 else None

    @classmethod
    def like(cls, redis: Any) -> "Client | ClusterClient":
        """A client for the Redis an asyncio redis-py client points at, with its
        credentials and TLS (for a RedisCluster client, a ClusterClient)."""
        from redis.asyncio.cluster import RedisCluster
        from redis.asyncio.sentinel import SentinelConnectionPool

        if isinstance(redis, RedisCluster):
            return ClusterClient.like(redis)
        pool = redis.connection_pool
        client = cls.of(pool.connection_class(**pool.connection_kwargs))  # not connected: its settings only
        if isinstance(pool, SentinelConnectionPool):
            client.primary = pool.get_master_address  # asked of the Sentinels at each new connection
        return client

    @classmethod
    def of(cls, conn: Any) -> "Client":
        """A client with the address and settings of an (unconnected) redis-py connection."""
        tls = conn.ssl_context.get() if getattr(conn, "ssl_context", None) is not None else None
        username, password = getattr(conn, "username", None), getattr(conn, "password", None)
        provider = getattr(conn, "credential_provider", None)
        if provider is not None:
            creds = provider.get_credentials()
            username, password = (None, creds[0]) if len(creds) == 1 else (creds[0], creds[1])
        timeout = getattr(conn, "socket_timeout", None) or TIMEOUT_S
        return cls(getattr(conn, "host", "localhost"), int(getattr(conn, "port", 6379) or 6379),
                   int(getattr(conn, "db", 0) or 0), username, password, getattr(conn, "path", None) or None, tls,
                   timeout)

    async def _connect(self) -> _Connection:
        if self.primary is not None:
            try:
                self.host, self.port = await self.primary()
            except exceptions.RedisError as exc:  # no Sentinel answered, or none knows a primary
                raise exceptions.ConnectionError(f"no Redis primary from the Sentinels: {exc}") from None
        try:
            if self.path:
                reader, writer = await asyncio.open_unix_connection(self.path)
            else:
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None)
        except OSError as exc:
            raise exceptions.ConnectionError(f"cannot connect to Redis: {exc}") from None
        conn = _Connection(reader, writer)
        setup: list[tuple[Any, ...]] = []
        if self.password:
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        if setup:
            try:
                raise_first(await conn.round_trip(b"".join(hiredis.pack_command(c) for c in setup),
                                                  len(setup), self.timeout))
            except BaseException:
                conn.close()
                raise
        return conn

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send the commands in one write and return their replies in order. Like
        redis-py's pipeline, every reply is read before the first error is raised,
        so the connection stays usable; a broken or timed-out one is closed."""
        replies = await self.execute_raw(commands)
        raise_first(replies)
        return replies

    async def execute_raw(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies in order, an error reply as its exception object."""
        if not commands:
            return []
        if self.wait is not None:
            # WAIT covers this connection's writes, and the ones before them on
            # this node (replication is in order), so every round trip ends with one.
            replies = await self._execute_raw([*commands, ("WAIT", *self.wait)])
            acked = replies.pop()
            if isinstance(acked, Exception):
                raise acked
            if acked < self.wait[0]:
                raise ReplicationError(f"{acked} of {self.wait[0]} replica(s) of {self.host}:{self.port} "
                                       f"acknowledged the batch's writes within {self.wait[1]} ms")
            return replies
        return await self._execute_raw(commands)

    async def _execute_raw(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        packed = b"".join(hiredis.pack_command(c) for c in commands)
        while self._idle:
            # An idle connection the server has closed meanwhile (a restart, its
            # idle-client timeout) fails before any reply: try the next, then a
            # new one. A failure after a reply, or on a new connection, is raised
            # and the caller retries the whole batch. Either way a command may
            # run twice if Redis closed the connection between running it and
            # answering: every script is idempotent, and a serial number
            # skipped (INCRBY) is harmless.
            conn = self._idle.pop()
            try:
                replies = await self._on(conn, packed, len(commands))
            except exceptions.ConnectionError:
                if conn.answered:
                    raise
                continue
            break
        else:
            replies = await self._on(None, packed, len(commands))
        if self.primary is not None and any(isinstance(r, exceptions.ReadOnlyError) for r in replies):
            # A failover made this node a replica: the next connections go to
            # the primary the Sentinels name now (the caller retries the batch).
            await self.aclose()
        return replies

    async def _on(self, conn: _Connection | None, packed: bytes, n: int) -> list[Any]:
        try:
            if conn is None:
                async with asyncio.timeout(self.timeout):
                    conn = await self._connect()
            replies = await conn.round_trip(packed, n, self.timeout)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                raise exceptions.TimeoutError(f"Redis sent nothing for {self.timeout}s") from None
            if isinstance(exc, OSError):
                raise exceptions.ConnectionError(f"Redis connection failed: {exc}") from None
            raise
        self._idle.append(conn)
        return replies

    async def aclose(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            conn.close()
            try:
                await conn.writer.wait_closed()
            except OSError:
                pass


class ReplicationError(exceptions.RedisError):
    """Fewer replicas than required acknowledged a round trip's writes in time."""


def raise_first(replies: list[Any]) -> None:
    for i, reply in enumerate(replies):
        if isinstance(reply, exceptions.ResponseError):
            raise reply.__class__(f"command {i + 1} of the batch: {reply}")


SLOTS = 16384
_KEY_AT = {b"EVALSHA": 3, b"EVAL": 3}  # where a command's first key is: 1 for the rest


def first_key(command: tuple[Any, ...]) -> Any:
    """The command's first key (what routes it on a cluster); None for a command without keys."""
    name = command[0].encode() if isinstance(command[0], str) else command[0]
    at = _KEY_AT.get(name.upper(), 1)
    if len(command) <= at or (at == 3 and not int(command[2])):
        return None
    return command[at]


def slot_of(command: tuple[Any, ...]) -> int | None:
    """The slot of the command's first key; None for a command without keys."""
    key = first_key(command)
    if key is None:
        return None
    return key_slot(key.encode() if isinstance(key, str) else key)


def _redirect(reply: Any) -> tuple[str, tuple[str, int]] | None:
    """("MOVED" | "ASK", node address) of a redirection reply, else None."""
    if not isinstance(reply, exceptions.ResponseError):
        return None
    kind, _, rest = str(reply).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    host, _, port = rest.split(" ")[-1].rpartition(":")
    return kind, (host, int(port))


class ClusterClient:
    """Batches for a Redis Cluster. Each command goes to the primary serving its
    first key's slot (every script call keeps to one slot bucket), one round trip
    per node, all nodes at once, the replies put back in order. A MOVED reply
    (the slot has moved) refreshes the slot map and sends that command again to
    its new node; an ASK reply (the slot is being migrated) sends it once, after
    ASKING, to the node named. redis-py's cluster pipelines refuse EVALSHA, so
    the worker's scripted batches need this."""

    def __init__(self, seed: Client):
        self.seed = seed  # address of the node REDIS_URL names, credentials, TLS, timeout
        self.nodes: dict[tuple[str, int], Client] = {}
        self.slots: list[tuple[str, int]] = []

    @classmethod
    def like(cls, cluster: Any) -> "ClusterClient":
        # Every node the redis-py client starts from (REDIS_URL's and
        # REDIS_CLUSTER_NODES) is asked for the slot map in turn.
        first, *more = cluster.nodes_manager.startup_nodes.values()
        client = cls(Client.of(first.connection_class(**first.connection_kwargs)))
        for node in more:
            client.node((node.host, node.port))
        return client

    def node(self, address: tuple[str, int]) -> Client:
        if address == (self.seed.host, self.seed.port):
            return self.seed
        client = self.nodes.get(address)
        if client is None:
            s = self.seed
            client = self.nodes[address] = Client(address[0], address[1], 0, s.username, s.password, None, s.tls,
                                                  s.timeout)
            client.wait = s.wait
        return client

    def require_replicas(self, replicas: int, timeout_ms: int) -> None:
        """As Client.require_replicas, on every node (each WAITs for its own replicas)."""
        for client in [self.seed, *self.nodes.values()]:
            client.require_replicas(replicas, timeout_ms)

    async def refresh(self) -> None:
        """The slot map, from the first node that answers CLUSTER SLOTS."""
        error: Exception | None = None
        for address in dict.fromkeys([(self.seed.host, self.seed.port), *self.nodes]):
            try:
                (ranges,) = await self.node(address).execute([("CLUSTER", "SLOTS")])
            except exceptions.RedisError as exc:
                error = exc
                continue
            slots = [address] * SLOTS
            for start, end, primary, *_replicas in ranges:
                host = primary[0].decode() or address[0]  # "": the node asked
                for slot in range(start, end + 1):
                    slots[slot] = (host, int(primary[1]))
            self.slots = slots
            return
        raise exceptions.ConnectionError(f"no cluster node answered CLUSTER SLOTS: {error}")

    async def execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        if not commands:
            return []
        if not self.slots:
            await self.refresh()
        replies: list[Any] = [None] * len(commands)
        todo = [(i, self._address(c), False) for i, c in enumerate(commands)]
        for _attempt in range(5):
            by_node: dict[tuple[str, int], list[tuple[int, bool]]] = {}
            for i, address, asking in todo:
                by_node.setdefault(address, []).append((i, asking))
            try:
                results = await asyncio.gather(*(
                    self.node(address).execute_raw([c for i, asking in items for c in
                                                    ((("ASKING",), commands[i]) if asking else (commands[i],))])
                    for address, items in by_node.items()))
            except (exceptions.ConnectionError, exceptions.TimeoutError):
                # A node gone (a failover promotes its replica): read the slot
                # map again before the batch is retried.
                self.slots = []
                raise
            todo, moved = [], False
            for items, result in zip(by_node.values(), results):
                answers = iter(result)
                for i, asking in items:
                    if asking:
                        next(answers)  # ASKING's OK
                    reply = next(answers)
                    redirect = _redirect(reply)
                    if redirect is None:
                        replies[i] = reply
                        continue
                    kind, address = redirect
                    moved = moved or kind == "MOVED"
                    todo.append((i, address, kind == "ASK"))
            if not todo:
                raise_first(replies)
                return replies
            if moved:
                await self.refresh()
        raise exceptions.ClusterError(f"{len(todo)} command(s) still redirected after 5 attempts")

    def _address(self, command: tuple[Any, ...]) -> tuple[str, int]:
        slot = slot_of(command)
        return (self.seed.host, self.seed.port) if slot is None else self.slots[slot]

    async def aclose(self) -> None:
        for client in [self.seed, *self.nodes.values()]:
            await client.aclose()


class Batch:
    """Commands queued for one round trip (the hot path's pipeline)."""

    __slots__ = ("client", "commands")

    def __init__(self, client: Client | ClusterClient):
        self.client = client
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(("EVALSHA", sha, numkeys, *keys_and_args))

    def incrby(self, key: str, amount: int = 1) -> None:
        self.commands.append(("INCRBY", key, amount))

    def __len__(self) -> int:
        return len(self.commands)

    async def execute(self) -> list[Any]:
        commands, self.commands = self.commands, []
        return await self.client.execute(commands)
