"""Run real `clearance worker` processes against the session's broker and Redis."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

import orjson

from config.settings import load_settings
from streams.embedded import free_port
from tests.conftest import ROOT
from topics import registry


def rules_file(version: str = "test-1", **params: Any) -> str:
    """The default rule set without random selection (so outcomes are exact),
    with parameters overridden, written as a self-contained JSON file."""
    import copy
    import tempfile

    from processors import ruleset

    doc = copy.deepcopy(ruleset.load_file(ruleset.DEFAULT_RULESET))
    doc["version"] = version
    doc["parameters"].update({"random_inspection_rate": 0, "random_inspection_rate_aeo": 0, "post_audit_rate": 0},
                             **params)
    fd, path = tempfile.mkstemp(suffix=".json")
    os.write(fd, orjson.dumps(doc))
    os.close(fd)
    return path


class Env:
    """An isolated namespace on the shared broker: its own topic prefix and group."""

    def __init__(self, services: Any, **extra: str):
        tag = uuid.uuid4().hex[:8]
        extra.setdefault("CLEARANCE_RULES", rules_file())
        self.env = dict(os.environ, **services.env(), CLEARANCE_TOPIC_PREFIX=f"t{tag}.",
                        CLEARANCE_GROUP=f"g{tag}", CLEARANCE_GATE_GROUP=f"gate{tag}",
                        CLEARANCE_SESSION_TIMEOUT_S="6", **extra)
        self.settings = load_settings(self.env)
        registry.ensure_topics(self.settings)
        self.workers: list[tuple[subprocess.Popen[bytes], int, str]] = []

    def start_worker(self) -> int:
        port = free_port()
        log = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"worker-{uuid.uuid4().hex[:6]}.log")
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "--web-port", str(port),
                                 "--loglevel", "warn"], env=self.env, cwd=ROOT,
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append((proc, port, log))
        return len(self.workers) - 1

    def wait_assigned(self, expected_total: int | None = None, timeout: float = 60) -> None:
        """Until every live worker has joined and (optionally) all partitions are assigned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = []
            for proc, port, log in self.workers:
                if proc.poll() is not None:
                    continue
                try:
                    counts.append(orjson.loads(urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/health", timeout=1).read())["assigned"])
                except Exception:
                    counts.append(-1)
            if counts and min(counts) > 0 and (expected_total is None or sum(counts) == expected_total):
                return
            time.sleep(0.3)
        raise TimeoutError("workers did not join the group; logs: " +
                           ", ".join(open(w[2]).read()[-2000:] for w in self.workers))

    def metrics(self, i: int) -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{self.workers[i][1]}/metrics", timeout=2).read().decode()

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.workers[i][0]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(15)

    def stop(self) -> None:
        for i in range(len(self.workers)):
            self.kill(i, signal.SIGTERM)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    def topic(self, spec: registry.TopicSpec) -> str:
        return registry.topic_name(spec, self.settings)


class Reader:
    """Reads an output topic from the beginning (assign, no group)."""

    def __init__(self, env: Env, spec: registry.TopicSpec):
        from confluent_kafka import Consumer, TopicPartition

        conf = env.settings.librdkafka_config()
        conf.update({"group.id": "test-reader", "enable.auto.commit": "false"})
        self.consumer = Consumer(conf)
        self.consumer.assign([TopicPartition(env.topic(spec), p, 0) for p in range(env.settings.partitions)])
        self.records: list[tuple[str, bytes]] = []

    def read_until(self, predicate: Any, timeout: float = 60) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate(self.records):
            for msg in self.consumer.consume(1000, 0.2):
                if not msg.error():
                    self.records.append((msg.key().decode(), msg.value()))
        return self.records

    def drain(self, quiet_s: float = 2.0) -> list[tuple[str, bytes]]:
        """Read until nothing new arrives for quiet_s."""
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            msgs = [m for m in self.consumer.consume(1000, 0.2) if not m.error()]
            if msgs:
                last = time.monotonic()
                self.records += [(m.key().decode(), m.value()) for m in msgs]
        return self.records

    def close(self) -> None:
        self.consumer.close()
