"""Redis at its maxmemory (docs/operations.md, ClearanceRedisMemoryHigh): a
batch fails closed, nothing is emitted, and the same batch retried once
memory is available decides every order once, each buyer's quota counted once."""
from __future__ import annotations

import asyncio

import orjson
import redis
import redis.asyncio as aioredis

from processors import ruleset
from streams import state
from streams.pipeline import Pipeline
from tests.helpers import CaptureSink, doc_records, order, settings_for
from topics import registry


def test_a_full_redis_fails_the_batch_closed_and_the_retry_decides_once(redis_url):
    r = redis.Redis.from_url(redis_url)
    orders = [order(900 + i) for i in range(5)]
    batch = [rec for o in orders for rec in doc_records(o)]
    sink = CaptureSink()
    policy = r.config_get("maxmemory-policy")["maxmemory-policy"]

    async def go() -> tuple[Exception | None, int]:
        client = aioredis.from_url(redis_url)
        p = Pipeline(settings_for(redis_url), client, sink, ruleset.load(ruleset.DEFAULT_RULESET))
        error = None
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", 1)  # every write refused
        try:
            await p.process(batch)
        except Exception as exc:  # the worker's loop retries the same batch (streams/app.py)
            error = exc
        finally:
            r.config_set("maxmemory", 0)
            r.config_set("maxmemory-policy", policy)
        emitted_while_full = len(sink.records)
        await p.process(batch, retry=True)
        await p.aclose()
        await client.aclose()
        return error, emitted_while_full

    error, emitted_while_full = asyncio.run(go())
    assert error is not None and "OOM" in str(error)
    assert emitted_while_full == 0
    decisions = [orjson.loads(v) for _, v in sink.on(registry.DECISIONS)]
    assert sorted(d["orderNo"] for d in decisions) == sorted(o.order_no for o in orders)
    for d in decisions:
        assert d["status"] == 800
        ledger = r.hget(state.ledger_key(d["buyer"], d["quota"]["year"]), "total")
        assert int(ledger) == round(float(d["dutiablePrice"]) * 100)
