"""take_batches on a real faust stream (the agent test context: an in-memory
channel, no broker)."""
from __future__ import annotations

import asyncio
from typing import Any

import faust

from streams.batching import take_batches


def _agent(max_events: int, within: float, work_s: float = 0.0) -> tuple[Any, dict[str, Any]]:
    app = faust.App("batching-test", store="memory://")
    log: dict[str, Any] = {"batches": [], "acked": [], "unacked_while_processing": [], "waits": 0}

    @app.agent()
    async def agent(stream: Any) -> None:
        ack, wait = stream.ack, stream.wait_for_stopped

        async def recording_ack(event: Any) -> bool:
            log["acked"].append(event.value)
            return await ack(event)

        async def counting_wait(*args: Any, **kw: Any) -> bool:
            log["waits"] += 1
            return await wait(*args, **kw)

        stream.ack, stream.wait_for_stopped = recording_ack, counting_wait
        async for batch in take_batches(stream, max_events, within):
            values = [e.value for e in batch]
            log["batches"].append(values)
            log["unacked_while_processing"].append(not set(values) & set(log["acked"]))
            await asyncio.sleep(work_s)

    return agent, log


def test_batches_keep_order_respect_the_maximum_and_lose_nothing() -> None:
    agent, log = _agent(max_events=3, within=0.01)

    async def main() -> None:
        async with agent.test_context() as ctx:
            for i in range(8):
                await ctx.put(i, wait=False)
            for _ in range(200):
                if sum(map(len, log["batches"])) == 8:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert [v for b in log["batches"] for v in b] == list(range(8))
    assert all(0 < len(b) <= 3 for b in log["batches"])
    assert len(log["batches"]) >= 3


def test_events_are_acknowledged_only_after_their_batch_is_processed() -> None:
    agent, log = _agent(max_events=2, within=0.005, work_s=0.02)

    async def main() -> None:
        async with agent.test_context() as ctx:
            for i in range(6):
                await ctx.put(i, wait=False)
            for _ in range(200):
                if len(log["acked"]) == 6:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert all(log["unacked_while_processing"])
    assert sorted(log["acked"]) == list(range(6))


def test_an_idle_stream_is_not_polled() -> None:
    # faust's take_events(within=0.005) would wake ~60 times in 0.3 s of silence.
    agent, log = _agent(max_events=100, within=0.005)

    async def main() -> None:
        async with agent.test_context() as ctx:
            await ctx.put("first", wait=False)
            for _ in range(100):
                if log["batches"]:
                    break
                await asyncio.sleep(0.01)
            waits_before = log["waits"]
            await asyncio.sleep(0.3)
            log["idle_waits"] = log["waits"] - waits_before
            await ctx.put("after the silence", wait=False)
            for _ in range(100):
                if len(log["batches"]) == 2:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert log["idle_waits"] <= 1
    assert log["batches"] == [["first"], ["after the silence"]]
