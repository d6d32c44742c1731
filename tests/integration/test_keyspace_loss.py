"""Redis losing its data is told, not silently decided over: the keyspace's
markers (state.epoch_keys), on the real Redis, in process and with real workers."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio as aioredis

from processors import decide
from streams import metrics as m
from streams import state
from streams.pipeline import Pipeline
from streams.simulator import Publisher, generate
from tests.conftest import ROOT
from tests.helpers import CaptureSink, doc_records, order, settings_for
from tests.integration.worker import Env, Reader
from topics import registry

pytestmark = pytest.mark.integration


def lost() -> float:
    return m.KEYSPACE_LOST._value.get()


def test_a_keyspace_emptied_or_cut_under_a_running_worker_is_told_once(redis_url, caplog):
    async def go() -> None:
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url), client, CaptureSink())
        before = lost()
        # The district's invtNo serial, begun an hour ago.
        first_order = order(1)
        now = int(time.time() * 1000)
        await client.set(state.serial_key(first_order.docs["621"][0]["customsCode"], decide.cst_stamp(now, 4)),
                         decide.serial_floor(now - 3_600_000))
        await p.process(doc_records(first_order))
        await p.sweep_timeouts()  # a new deployment: the markers are written, nothing is told
        assert lost() == before and "Redis lost data" not in caplog.text
        markers = state.epoch_keys(p.buckets)
        assert await client.exists(*markers) == len(markers)
        # Redis restarted without its data.
        await client.flushdb()
        await p.sweep_timeouts()
        # The district's serial starts again above every one issued before it
        # (fewer than 30 a second since it began): no invtNo is issued twice.
        await p.process(doc_records(order(2)))
        first, second = (d["invtNo"] for d in p.sink.decisions())
        assert first[:8] == second[:8] and int(second[-9:]) > int(first[-9:])
        assert lost() == before + 1
        assert f"Redis lost data of namespace 'clr': {len(markers)} of {len(markers)} slot buckets' markers " \
               "disappeared" in caplog.text
        assert await client.exists(*markers) == len(markers)  # written again: told once
        await p.sweep_timeouts()
        assert lost() == before + 1
        # One bucket's data gone (a cluster shard lost, keys evicted).
        await client.delete(markers[3])
        await p.sweep_timeouts()
        assert lost() == before + 2 and f"1 of {len(markers)} slot buckets' markers disappeared" in caplog.text
        await p.aclose()
        await client.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("consumed_before, deployments_hash, markers, told", [
    (True, False, False, True),     # emptied while no worker ran
    (False, False, False, False),   # a new deployment
    (None, False, False, False),    # the broker did not say: not told on a guess
    (True, True, False, False),     # upgraded from a version before the markers
    (True, True, True, False),      # a restart like any other
])
def test_a_worker_starting_on_an_emptied_keyspace_tells_it(redis_url, caplog, consumed_before, deployments_hash,
                                                           markers, told):
    async def go() -> None:
        client = aioredis.from_url(redis_url)
        if deployments_hash:
            await client.hset(state.deployments_key(), "", 1)
        if markers:
            for key in state.epoch_keys():
                await client.set(key, "1:earlier")
        p = Pipeline(settings_for(redis_url), client, CaptureSink())
        before = lost()
        await p.open_keyspace(consumed_before)
        assert lost() == before + told
        assert ("this worker group has consumed before" in caplog.text) is told
        assert p.epoch == "1:earlier" if markers else p.epoch
        assert await client.exists(*state.epoch_keys()) == len(state.epoch_keys())
        await p.sweep_timeouts()
        assert lost() == before + told
        await p.aclose()
        await client.aclose()

    asyncio.run(go())


def worker_lost(env: Env) -> float:
    found = re.search(r"^clearance_redis_keyspace_lost_total (\S+)$", env.metrics(len(env.workers) - 1), re.M)
    return float(found[1]) if found else -1


def test_real_workers_tell_redis_emptied_under_them_and_before_their_start(services, redis_url):
    env = Env(services)
    r = redis.Redis.from_url(redis_url)
    try:
        env.start_worker()
        env.wait_assigned()
        orders = list(generate(10, seed=61, prefix="LOST"))
        pub = Publisher(env.settings, "json", batch=10)
        pub.send(orders)
        pub.flush()
        Reader(env, registry.DECISIONS).read_until(lambda rs: len(rs) >= len(orders), timeout=60)
        assert worker_lost(env) == 0
        r.flushdb()  # under the running worker
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and worker_lost(env) < 1:
            time.sleep(0.3)
        assert worker_lost(env) == 1
        env.stop()
        # Offsets were committed; Redis loses everything again while no worker runs.
        assert r.exists(*state.epoch_keys()) == len(state.epoch_keys())  # written again when told
        r.flushdb()
        env.start_worker()
        env.wait_assigned()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and worker_lost(env) < 1:
            time.sleep(0.3)
        assert worker_lost(env) == 1
        assert "this worker group has consumed before" in open(env.workers[-1][2]).read()
    finally:
        env.stop()


def resume(redis_url: str) -> str:
    env = dict(os.environ, REDIS_URL=redis_url, KAFKA_BOOTSTRAP="unused:1")
    done = subprocess.run([sys.executable, "-m", "streams.cli", "resume"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_under_halt_a_lost_keyspace_stops_every_worker_until_an_operator_resumes(redis_url, caplog):
    from streams.app import process_until_done

    async def go() -> None:
        client = aioredis.from_url(redis_url)
        settings = settings_for(redis_url, redis_loss="halt", match_timeout_s=0.05)
        a, b = (Pipeline(settings, client, CaptureSink()) for _ in range(2))
        await process_until_done(a, doc_records(order(1)))
        for p in (a, b):
            await p.sweep_timeouts()
        await client.flushdb()
        await a.sweep_timeouts()  # tells the loss and halts the namespace
        await b.sweep_timeouts()  # finds the halt: the markers are back, but the namespace is halted
        assert a.halted and b.halted and m.HALTED._value.get() == 1
        assert "every worker stops deciding until `clearance resume`" in caplog.text
        # A batch waits, unacknowledged; an order whose documents came meanwhile does not time out.
        held = asyncio.create_task(process_until_done(a, doc_records(order(2))))
        await b.process(doc_records(order(3, "missing_payment")))
        await asyncio.sleep(1.0)
        assert await b.sweep_timeouts() == 0
        assert not held.done() and a.sink.decisions()[1:] == [] and b.sink.decisions() == []
        said = await asyncio.to_thread(resume, redis_url)
        assert said.startswith("resumed (Redis namespace 'clr'); the halt was: ") and "markers disappeared" in said
        await a.sweep_timeouts()  # resumed, and the order without its payment times out now
        await asyncio.wait_for(held, 5)
        await b.sweep_timeouts()
        decided = {d["orderNo"]: d for d in a.sink.decisions() + b.sink.decisions()}
        assert len(decided) == len(a.sink.decisions() + b.sink.decisions()) == 3
        assert decided[order(2).order_no]["status"] == 800
        assert decided[order(3).order_no]["rules"] == ["match.timeout"] and m.HALTED._value.get() == 0
        assert "resumed: the halt was lifted" in caplog.text
        assert (await asyncio.to_thread(resume, redis_url)).startswith("not halted")
        for p in (a, b):
            await p.aclose()
        await client.aclose()

    asyncio.run(go())
