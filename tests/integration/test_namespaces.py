"""Two deployments on one Redis database, each in its own key namespace
(CLEARANCE_REDIS_NAMESPACE): real worker processes, the real broker and Redis."""
from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid

import orjson
import pytest
import redis

from streams.simulator import Publisher, make_order, to_json
from tests.conftest import ROOT
from tests.integration.worker import Env, Reader
from topics import registry

pytestmark = pytest.mark.integration


def test_a_deployment_in_its_own_namespace_neither_sees_nor_sweeps_anothers_orders(services, redis_url):
    # redis_url: an empty database, so that every key at the end is one of these two zones'.
    tag = uuid.uuid4().hex[:6]
    yangpu_ns, haikou_ns = f"yangpu-{tag}", f"haikou.{tag}"
    # Haikou times a match out after 1 s and sweeps every second: in a shared
    # keyspace its sweep would decide Yangpu's order, still waiting for its
    # waybill, as a timeout on Haikou's topics.
    yangpu = Env(services, CLEARANCE_REDIS_NAMESPACE=yangpu_ns)
    haikou = Env(services, CLEARANCE_REDIS_NAMESPACE=haikou_ns, CLEARANCE_MATCH_TIMEOUT_S="1")
    r = redis.Redis.from_url(redis_url)
    # Yangpu's gate service too: the parcels it records are in Yangpu's namespace.
    gate = subprocess.Popen([sys.executable, "-m", "streams.cli", "gate"], env=yangpu.env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for env in (yangpu, haikou):
            env.start_worker()
        for env in (yangpu, haikou):
            env.wait_assigned()
        # One order number, declared in both zones by the same platform: each
        # zone decides its own.
        order = make_order(1, random.Random(5), prefix=f"NS{tag}")
        without_waybill = dataclasses.replace(order, docs={t: d for t, d in order.docs.items() if t != "511"})
        to_yangpu, to_haikou = Publisher(yangpu.settings), Publisher(haikou.settings)
        to_yangpu.send([without_waybill])
        to_yangpu.flush()
        to_haikou.send([order])
        to_haikou.flush()
        haikou_decisions = Reader(haikou, registry.DECISIONS)
        (_, raw), = haikou_decisions.read_until(lambda rs: len(rs) >= 1, timeout=60)
        assert orjson.loads(raw)["status"] == 800
        # Yangpu's three documents are stored, pending, in its namespace only.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not r.keys(f"{yangpu_ns}:p:*"):
            time.sleep(0.2)
        pending = [m.decode() for k in r.keys(f"{yangpu_ns}:p:*") for m in r.zrange(k, 0, -1)]
        assert len(pending) == 1 and pending[0].startswith(f"{yangpu_ns}:o:{{o")
        assert pending[0].endswith(order.order_no)
        # Several of Haikou's sweeps pass over it; then the waybill completes it.
        time.sleep(4)
        to_yangpu.send_raw("511", order.order_no, to_json("511", [order.docs["511"]]))
        to_yangpu.flush()
        yangpu_decisions = Reader(yangpu, registry.DECISIONS)
        (_, raw), = yangpu_decisions.read_until(lambda rs: len(rs) >= 1, timeout=60)
        decision = orjson.loads(raw)
        assert decision["status"] == 800 and "match.timeout" not in decision["rules"]
        assert decision["orderKey"].startswith(yangpu_ns + ":o:")
        assert [orjson.loads(v)["orderKey"] for _, v in haikou_decisions.drain()] == \
            [f"{haikou_ns}:o:" + decision["orderKey"].split(":", 2)[2]]
        # The parcel leaves through Yangpu's gate, and Yangpu's operators trace
        # the order: both commands find it in Yangpu's namespace.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not r.keys(f"{yangpu_ns}:parcel:*"):
            time.sleep(0.2)
        exited = orjson.loads(yangpu.cli("exit", order.logistics_no, "--gate", "YP-01").stdout)
        assert exited["result"] == "exited"
        traced = orjson.loads(yangpu.cli("trace", order.order_no, "--json").stdout)
        assert traced["decision"]["status"] == 800 and traced["decision"]["logisticsNo"] == order.logistics_no
        # Nothing of either zone was written outside its namespace.
        assert r.keys("*") and not [k for k in r.keys("*")
                                    if not k.decode().startswith((yangpu_ns + ":", haikou_ns + ":"))]
        # Each worker counts one deployment in its namespace: no shared-Redis alarm.
        for env in (yangpu, haikou):
            metrics = env.metrics(0)
            assert re.search(r"^clearance_redis_deployments 1\.0$", metrics, re.M)
            # Which zone the worker's series are of, on /metrics.
            info = re.search(r"^clearance_worker_info\{([^}]*)\} 1\.0$", metrics, re.M)
            assert info and f'topic_prefix="{env.settings.topic_prefix}"' in info[1] \
                and f'redis_namespace="{env.settings.redis_namespace}"' in info[1]
            assert r.hkeys(f"{env.settings.redis_namespace}:deployments") == [env.settings.topic_prefix.encode()]
    finally:
        os.killpg(gate.pid, signal.SIGTERM)
        gate.wait(15)
        for env in (yangpu, haikou):
            env.stop()
