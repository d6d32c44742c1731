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
