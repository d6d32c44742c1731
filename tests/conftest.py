"""Shared fixtures. Integration tests run on the real embedded broker (Tansu)
and a real Redis, started here once per session unless KAFKA_BOOTSTRAP /
REDIS_URL name running ones."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures"
# Helpers outside test modules that assert: their failures say what differed.
pytest.register_assert_rewrite("tests.integration.fronted")


@pytest.fixture(scope="session")
def services():
    from streams import embedded

    svc = embedded.start(os.environ.get("KAFKA_BOOTSTRAP", ""), os.environ.get("REDIS_URL", ""))
    yield svc
    svc.stop()


@pytest.fixture
def redis_url(services):
    import redis

    r = redis.Redis.from_url(services.redis_url)
    r.flushdb()
    return services.redis_url


@pytest.fixture(scope="session")
def _local_cluster(tmp_path_factory):
    from streams.embedded import LocalCluster

    cluster = LocalCluster(str(tmp_path_factory.mktemp("redis-cluster")))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(_local_cluster):
    """A three-node Redis Cluster, emptied for the test."""
    _local_cluster.flush()
    return _local_cluster
