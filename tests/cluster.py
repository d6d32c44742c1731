"""A three-node Redis Cluster (primaries only) on local ports, for the tests
of the worker, the gate and the CLI against a cluster."""
from __future__ import annotations

import os
import random
import socket
import subprocess
import time

import redis

from streams import embedded

SLOTS = ((0, 5460), (5461, 10922), (10923, 16383))


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10,000) is free too: Redis refuses
    ports above 55,535 in cluster mode."""
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
    def __init__(self, workdir: str):
        self.ports = [_cluster_port() for _ in SLOTS]
        self.procs = []
        for port in self.ports:
            d = os.path.join(workdir, str(port))
            os.makedirs(d, exist_ok=True)
            self.procs.append(subprocess.Popen(
                [embedded.redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--dir", d],
                stdout=open(os.path.join(d, "redis.log"), "wb"), stderr=subprocess.STDOUT, start_new_session=True))
        try:
            for port, proc in zip(self.ports, self.procs):
                embedded._wait_port(port, proc, "redis-server (cluster node)")
            nodes = self.nodes()
            for r, (first, last) in zip(nodes, SLOTS):
                r.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
            for r in nodes[1:]:
                r.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0])
            deadline = time.monotonic() + 20
            while not all(r.execute_command("CLUSTER INFO").get("cluster_state") == "ok" for r in nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the local Redis Cluster did not come up")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"

    def nodes(self) -> list[redis.Redis]:
        return [redis.Redis(host="127.0.0.1", port=p) for p in self.ports]

    def node_id(self, r: redis.Redis) -> str:
        return r.execute_command("CLUSTER MYID").decode()

    def owner(self, slot: int) -> int:
        return next(i for i, (first, last) in enumerate(SLOTS) if first <= slot <= last)

    def flush(self) -> None:
        for r in self.nodes():
            r.flushall()

    def stop(self) -> None:
        embedded.Services("", "", list(self.procs)).stop()
