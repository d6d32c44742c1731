"""take_batches on a real faust stream (the agent test context: an in-memory
channel, no broker)."""
from __future__ import annotations

import asyncio
from typing import Any

import faust

from streams.batching import take_batches


def _feed(agent: Any, values: list[Any], done: Any, polls: int = 200) -> None:
    """Put values on the agent's stream, then wait (bounded) until done() holds."""
    async def main() -> None:
        async with agent.test_context() as ctx:
            for value in values:
                await ctx.put(value, wait=False)
            for _ in range(polls):
                if done():
                    break
                await asyncio.sleep(0.01)

    asyncio.run(main())


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

    _feed(agent, list(range(8)), lambda: sum(map(len, log["batches"])) == 8)
    assert [v for b in log["batches"] for v in b] == list(range(8))
    assert all(0 < len(b) <= 3 for b in log["batches"])
    assert len(log["batches"]) >= 3


def test_events_are_acknowledged_only_after_their_batch_is_processed() -> None:
    agent, log = _agent(max_events=2, within=0.005, work_s=0.02)

    _feed(agent, list(range(6)), lambda: len(log["acked"]) == 6)
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


# ---------------------------------------------------------------- overlapped


async def _batches(items: list[Any]) -> Any:
    for item in items:
        yield item


def _run_overlapped(items: list[Any], work_s: dict[Any, float], depth: int,
                    fail: Any = None) -> dict[str, Any]:
    log: dict[str, Any] = {"started": [], "completed": [], "inflight": 0, "most": 0, "error": None}

    async def work(batch: Any) -> None:
        log["started"].append(batch)
        log["inflight"] += 1
        log["most"] = max(log["most"], log["inflight"])
        try:
            await asyncio.sleep(work_s.get(batch, 0.0))
            if batch == fail:
                raise RuntimeError(f"batch {batch} failed")
        finally:
            log["inflight"] -= 1

    async def complete(batch: Any) -> None:
        log["completed"].append(batch)

    from streams.batching import overlapped

    async def main() -> None:
        try:
            await overlapped(_batches(items), work, complete, depth)
        except RuntimeError as exc:
            log["error"] = str(exc)

    asyncio.run(main())
    return log


def test_overlapped_batches_complete_in_arrival_order_even_when_work_finishes_out_of_order() -> None:
    # Batch 0 is slow, batch 1 fast: 1's work ends first but it completes after 0.
    log = _run_overlapped([0, 1, 2, 3], {0: 0.05, 2: 0.03}, depth=2)
    assert log["completed"] == [0, 1, 2, 3]
    assert log["most"] == 2  # the second batch did start while the first was in flight


def test_overlapped_keeps_at_most_depth_batches_in_flight() -> None:
    log = _run_overlapped(list(range(10)), {i: 0.01 for i in range(10)}, depth=3)
    assert log["completed"] == list(range(10))
    assert log["most"] == 3
    one_at_a_time = _run_overlapped(list(range(5)), {i: 0.005 for i in range(5)}, depth=1)
    assert one_at_a_time["most"] == 1 and one_at_a_time["completed"] == list(range(5))


def test_nothing_completes_past_a_failed_batch_and_the_failure_is_raised() -> None:
    # Batch 1 fails while 2 is in flight: 2 must not be completed (its acknowledgement
    # would commit offsets past batch 1), and the caller sees the failure.
    log = _run_overlapped([0, 1, 2, 3, 4], {1: 0.02}, depth=2, fail=1)
    assert log["completed"] == [0]
    assert log["error"] == "batch 1 failed"


def test_overlapped_agent_acknowledges_every_event_in_order_after_processing() -> None:
    from streams.batching import overlapped

    app = faust.App("overlapped-test", store="memory://")
    log: dict[str, Any] = {"acked": [], "processed": set(), "premature": 0}

    @app.agent()
    async def agent(stream: Any) -> None:
        async def work(batch: list[Any]) -> None:
            # Earlier batches take longer, so later ones finish their work first.
            await asyncio.sleep(0.03 if batch[0].value % 4 == 0 else 0.0)
            log["processed"].update(e.value for e in batch)

        async def complete(batch: list[Any]) -> None:
            for event in batch:
                if event.value not in log["processed"]:
                    log["premature"] += 1
                log["acked"].append(event.value)
                await stream.ack(event)

        await overlapped(take_batches(stream, 2, 0.001, ack=False), work, complete, 2)

    _feed(agent, list(range(12)), lambda: len(log["acked"]) == 12, polls=300)
    assert log["acked"] == list(range(12))
    assert log["premature"] == 0


def test_events_arriving_while_every_slot_is_busy_join_one_next_batch() -> None:
    # One slot, a slow first batch: what arrives meanwhile must form the next batch
    # whole, not a batch cut 1 ms after its first event and left waiting for the slot.
    from streams.batching import overlapped

    app = faust.App("overlapped-slots-test", store="memory://")
    batches: list[list[int]] = []
    started = asyncio.Event()

    @app.agent()
    async def agent(stream: Any) -> None:
        async def work(batch: list[Any]) -> None:
            batches.append([e.value for e in batch])
            started.set()
            await asyncio.sleep(0.1 if batch[0].value == 0 else 0.0)

        async def complete(batch: list[Any]) -> None:
            for event in batch:
                await stream.ack(event)

        await overlapped(take_batches(stream, 100, 0.001, ack=False), work, complete, 1)

    async def main() -> None:
        async with agent.test_context() as ctx:
            await ctx.put(0, wait=False)
            await asyncio.wait_for(started.wait(), 2)
            for i in range(1, 6):
                await ctx.put(i, wait=False)
                await asyncio.sleep(0.01)
            for _ in range(200):
                if sum(map(len, batches)) == 6:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(main())
    assert batches == [[0], [1, 2, 3, 4, 5]]
