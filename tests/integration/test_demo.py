"""The README's first command, briefly, as a new user runs it: everything
embedded, every order decided once, the released parcels let out through the
gate with their exit events, and nothing left running."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_the_demo_decides_every_order_once_lets_parcels_out_and_stops_everything():
    # Its own broker and Redis: nothing of the test session's is named to it.
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL", "REDIS_CLUSTER")}
    run = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--duration", "6", "--rate", "50",
                          "--match-timeout", "3"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    summary = re.search(r"summary: (\d+) orders published .*?, (\d+) decided \((\d+) still pending\), "
                        r"(\d+) with an unexpected status, (\d+) duplicate decision events", out)
    assert summary, out[-3000:]
    published, decided, pending, unexpected, duplicates = map(int, summary.groups())
    assert published > 0 and decided == published and (pending, unexpected, duplicates) == (0, 0, 0)
    gate = re.search(r"gate: (\d+) parcels let out, (\d+) of them with their exit event", out)
    assert gate and int(gate.group(1)) > 0 and gate.group(1) == gate.group(2), out[-3000:]
    # The gate service's own metrics agree with what the yard let out.
    view = re.search(r"gate service \(its /metrics\): (\d+) parcels made releasable, (\d+) exits counted", out)
    assert view and view.group(2) == gate.group(1) and int(view.group(1)) >= int(view.group(2)), out[-3000:]
    assert "all demo processes stopped" in out
    started = re.search(r"embedded broker [\d.]+:(\d+), redis redis://[\d.]+:(\d+)/", out)
    assert started, out[:2000]
    for port in map(int, started.groups()):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
