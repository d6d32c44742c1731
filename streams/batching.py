"""Batches of stream events for the agents, without a polling loop.

faust's `Stream.take_events(max, within)` wakes every `within` seconds
whether or not anything arrived (with the 5 ms the ingest agent wants, 200
wake-ups a second, each creating tasks and futures: ~0.09 core of an idle
worker), and it stops collecting while the caller processes a batch, so the
next batch always starts empty and waits for a tick.

`take_batches` sleeps until the first event arrives, then gives the batch at
most `within` to fill (or until it holds `max_events`), and keeps collecting
the next batch while the caller processes this one (bounded by `max_events`:
a full buffer blocks the stream, which pauses the fetch). Events are
acknowledged after the caller has finished with their batch, as with
take_events, so offsets are committed only for processed events.

`overlapped` can let the next batch start while the previous one waits on
Redis and the broker: up to `depth` batches are in flight, and each one's
completion step (acknowledgement, progress) runs in arrival order, so nothing
is acknowledged past a batch still in flight. With depth 1 (the worker's
default, CLEARANCE_INFLIGHT_BATCHES) it is the plain loop: take, process, ack.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any


async def take_batches(stream: Any, max_events: int, within: float,
                       ack: bool = True) -> AsyncIterator[list[Any]]:
    """Batches of events; with ack=False the caller acknowledges them (overlapped)."""
    ready: list[Any] = []          # events collected for the next batch
    has_events = asyncio.Event()   # ready is not empty
    full = asyncio.Event()         # ready holds max_events
    room = asyncio.Event()         # ready has room (cleared while full)
    room.set()

    async def collect(value: Any) -> Any:
        # Runs in the stream's own reader for every value, in order.
        while len(ready) >= max_events and not stream.should_stop:
            room.clear()
            await stream.wait(room)
        event = stream.current_event
        if event is None:
            raise RuntimeError("stream value without an event")
        ready.append(event)
        has_events.set()
        if len(ready) >= max_events:
            full.set()
        return value

    acks = stream.enable_acks
    stream.enable_acks = False  # acknowledged below, once processed
    stream.add_processor(collect)
    # The stream reads its channel in the background and feeds `collect`
    # (the mechanism take_events uses; faust has no public name for it).
    stream._enable_passive(stream.channel.__aiter__())
    try:
        while not stream.should_stop:
            if await stream.wait_for_stopped(has_events):
                break
            if within and not full.is_set():
                await stream.wait_for_stopped(full, timeout=within)
            if not ready:
                continue
            batch = ready.copy()
            ready.clear()
            has_events.clear()
            full.clear()
            room.set()
            try:
                yield batch
            finally:
                if ack:
                    for event in batch:
                        await stream.ack(event)
    finally:
        stream.enable_acks = acks
        stream._processors.remove(collect)


async def overlapped(batches: AsyncIterator[list[Any]], work: Callable[[list[Any]], Awaitable[None]],
                     complete: Callable[[list[Any]], Awaitable[None]], depth: int) -> None:
    """Run `work(batch)` for up to `depth` batches at once, then `complete(batch)`
    for each in the order the batches came (after its own work and after the
    previous batch's completion). A batch whose work or predecessor failed or
    was cancelled is not completed. When `batches` ends, batches in flight
    finish; when this coroutine is cancelled, they are cancelled too."""
    slots = asyncio.Semaphore(max(1, depth))
    inflight: set[asyncio.Task[None]] = set()
    previous: asyncio.Task[None] | None = None
    failed: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        inflight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception())  # type: ignore[arg-type]

    async def one(batch: list[Any], before: asyncio.Task[None] | None) -> None:
        try:
            await work(batch)
            if before is not None:
                await asyncio.shield(before)  # raises if it failed: no completion past a gap
            await complete(batch)
        finally:
            slots.release()

    it = batches.__aiter__()
    try:
        while True:
            # A slot first, then the batch: events that arrive while every slot
            # is busy join the next batch instead of waiting in a batch cut early.
            await slots.acquire()
            if failed:  # the agent fails as the sequential loop would, not silently
                slots.release()
                raise failed[0]
            try:
                batch = await it.__anext__()
            except StopAsyncIteration:
                slots.release()
                break
            task = asyncio.create_task(one(batch, previous))
            inflight.add(task)
            task.add_done_callback(finished)
            previous = task
        if inflight:
            await asyncio.gather(*inflight)
    finally:
        for task in inflight:
            task.cancel()
        if inflight:
            await asyncio.gather(*inflight, return_exceptions=True)
