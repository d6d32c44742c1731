"""The worker keeps the root logger at the level asked for (faust would lower
it to DEBUG for its terminal spinner, making every debug call build a record)."""
from __future__ import annotations

import logging

import faust

import streams.app  # noqa: F401  (installs the fix)


def test_root_logger_stays_at_the_requested_level() -> None:
    app = faust.App("logging-test", store="memory://")
    worker = faust.Worker(app, loglevel="warn")
    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.WARNING)
        worker.on_setup_root_logger(root, logging.WARNING)
        assert root.level == logging.WARNING
        assert not logging.getLogger("aiokafka").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(before)


def test_worker_start_freezes_start_up_objects_and_collects_less_often() -> None:
    # In a child process: the collector settings are process-wide.
    import json
    import subprocess
    import sys

    code = ("import gc, json; from streams.app import tune_gc, GC_THRESHOLDS; before = gc.get_threshold(); "
            "tune_gc(); print(json.dumps([before, gc.get_threshold(), GC_THRESHOLDS, gc.get_freeze_count()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after, wanted, frozen = json.loads(out)
    assert before == [700, 10, 10]
    assert after == wanted and after[0] > before[0]
    assert frozen > 10_000  # faust, aiokafka and the app's modules are out of the collector's sight
