"""The shortest fault-injection cases (the full suite is `make chaos`)."""
from __future__ import annotations

import pytest

from benchmarks.chaos import run_scenario

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("scenario", ["redis_stall", "redis_restart"])
def test_books_balance_after_a_redis_fault(scenario):
    r = run_scenario(scenario, rate=30, duration=10, fault_at=3, outage=3)
    assert r["lost"] == 0 and r["undecided"] == 0
    assert r["conflicting_decisions"] == 0 and r["unexpected_outcomes"] == 0
    assert r["gate_releasable_first_pass"] == r["released"] and r["gate_releasable_replay"] == 0
    assert r["quota_mismatches"] == 0
