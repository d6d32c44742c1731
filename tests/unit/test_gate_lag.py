"""The gate service's lag behind the release topic, from a consumer's offsets (pure)."""
from __future__ import annotations

import time
from types import SimpleNamespace

from streams import metrics as m
from streams.gate import ReleaseLag


class FakeConsumer:
    """What ReleaseLag asks of confluent-kafka's Consumer."""

    def __init__(self, committed: dict[int, int], ends: dict[int, tuple[int, int]]):
        self.committed_at, self.ends = committed, ends

    def assignment(self):
        return [SimpleNamespace(partition=p) for p in self.committed_at]

    def committed(self, tps, timeout=None):
        return [SimpleNamespace(partition=tp.partition, offset=self.committed_at[tp.partition]) for tp in tps]

    def get_watermark_offsets(self, tp, cached=False):
        return self.ends[tp.partition]


class Msg:
    def __init__(self, partition: int, ts_ms: int):
        self._p, self._ts = partition, ts_ms

    def partition(self):
        return self._p

    def timestamp(self):
        return (1, self._ts)


def shown(name: str) -> dict[str, float]:
    return {s.labels["partition"]: s.value for family in m.GATE_REGISTRY.collect() for s in family.samples
            if s.name == name}


def test_lag_is_counted_from_what_was_applied_and_a_partition_given_away_is_dropped():
    lag = ReleaseLag()
    now = int(time.time() * 1000)
    # Partition 7: applied up to offset 5 of 8, the newest record applied written a minute ago.
    # Partition 8: nothing committed yet, 3 records. Partition 9: not fetched from yet.
    consumer = FakeConsumer({7: 5, 8: -1001, 9: -1001}, {7: (0, 8), 8: (0, 3), 9: (-1001, -1001)})
    lag.applied([Msg(7, now - 60_000), Msg(7, now - 61_000)])
    lag.update(consumer, every_s=0)
    assert lag.assigned == 3
    records, seconds = shown("clearance_gate_release_lag_records"), shown("clearance_gate_release_lag_seconds")
    assert records["7"] == 3 and records["8"] == 3 and "9" not in records
    assert seconds["7"] >= 60  # behind since the newest record it applied was written
    assert 0 <= seconds["8"] < 60  # none applied: behind since it took the partition, just now

    # Partition 8 goes to another gate service; 7 catches up.
    consumer = FakeConsumer({7: 8}, {7: (0, 8)})
    lag.update(consumer, every_s=0)
    assert shown("clearance_gate_release_lag_records").get("7") == 0
    assert shown("clearance_gate_release_lag_seconds").get("7") == 0
    assert "8" not in shown("clearance_gate_release_lag_records")
    assert "8" not in shown("clearance_gate_release_lag_seconds")


def test_the_lag_is_read_at_most_once_per_interval():
    lag = ReleaseLag()
    consumer = FakeConsumer({11: 0}, {11: (0, 4)})
    lag.update(consumer, every_s=60)
    consumer.committed_at[11] = 4
    lag.update(consumer, every_s=60)  # too soon: the broker is not asked again
    assert shown("clearance_gate_release_lag_records")["11"] == 4
    lag.next_update = 0
    lag.update(consumer, every_s=60)
    assert shown("clearance_gate_release_lag_records")["11"] == 0
