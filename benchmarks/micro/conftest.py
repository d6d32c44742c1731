"""Micro-benchmarks of the per-document processors, no broker (make bench-micro).

In `make test` they run once each with timing disabled, as tests of what they
measure; `make bench-micro` times them (pytest-benchmark) and saves the run so
the next one can be compared with --benchmark-compare.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@pytest.fixture(scope="session")
def redis_only():
    from streams import embedded

    svc = embedded.start("unused:1", os.environ.get("REDIS_URL", ""))  # Redis only: the match step needs it
    yield svc.redis_url
    svc.stop()
