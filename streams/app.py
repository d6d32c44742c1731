"""The faust worker: one agent over the four inbound topics, a timeout sweep,
and the /metrics page. Thin: decode and decide happen in `Pipeline`.

The agent takes batches (`streams.batching.take_batches`) so a 100-document
CEB message and a burst of per-document JSON records are both processed as one
unit; the events are acknowledged only after the batch returns, i.e. after its
outputs are flushed to the broker. CLEARANCE_INFLIGHT_BATCHES (default 1) batches
may be in flight (`streams.batching.overlapped`); they are acknowledged in order.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import ssl
import time
from typing import Any

import faust
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config.settings import Settings
from streams import __version__
from streams import metrics as m
from streams import state
from streams.auth import FilesValid, SharedToken
from streams.batching import overlapped, take_batches
from streams.lag import BrokerEnds, LagBook, drop_series, group_has_consumed
from streams.output import KafkaSink
from streams.pipeline import InRecord, Pipeline
from streams.tls import export_expiry
from streams.rules_feed import RulesFeed, initial_rules
from topics import registry

log = logging.getLogger("clearance.worker")

# faust hard-codes fetch_max_wait_ms=1500 for its stream consumer. A broker
# that holds a fetch until that wait expires whenever some requested partition
# is empty (Tansu does) then adds ~0.75 s median to every decision. A short
# wait costs an idle fetch loop a little CPU and buys millisecond latency.
# On a Kafka cluster a fetch returns as soon as data arrives: set 500 there
# (CLEARANCE_FETCH_MAX_WAIT_MS, docs/operations.md).
_FETCH_MAX_WAIT_MS = {"value": 20}  # set from the settings by create_app
_create_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def _short_fetch_wait(self: Any, transport: Any) -> Any:
    consumer = _create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = _FETCH_MAX_WAIT_MS["value"]
    return consumer


AIOKafkaConsumerThread._create_worker_consumer = _short_fetch_wait


def _no_spinner_handler(self: Any, logger: logging.Logger, level: int) -> None:
    """faust's worker, at log level warn or above, hangs a terminal spinner on
    the root logger and lowers the root logger to DEBUG so that every message
    spins it. Every debug call in aiokafka's fetch loop then builds a LogRecord
    (a third of an idle worker's consumer-thread CPU, measured with py-spy).
    Keep the root logger at the level asked for."""


faust.Worker._setup_spinner_handler = _no_spinner_handler


# The hot path allocates a few dozen dicts and lists per document, nearly all
# freed by reference counting; the cyclic collector's default (a generation-0
# pass every 700 allocations, a full pass over faust's and aiokafka's object
# graph now and then) found almost nothing and cost 4-9 % of the pipeline's
# CPU (benchmarks/README.md, "Fourth session").
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    """Before the worker starts: move what start-up built out of the collector's
    sight (gc.freeze) and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _credentials(settings: Settings) -> Any:
    proto = settings.kafka_security_protocol.upper()
    ctx = None
    if "SSL" in proto:
        ctx = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
        if settings.kafka_ssl_certfile:  # mutual TLS: the broker knows this worker by its certificate
            ctx.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile or None,
                                settings.kafka_ssl_key_password)  # "", not None: OpenSSL would ask a terminal
    if "SASL" in proto:
        return faust.SASLCredentials(username=settings.kafka_sasl_username,
                                     password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism or "PLAIN", ssl_context=ctx)
    return ctx


def create_app(settings: Settings) -> faust.App:
    _FETCH_MAX_WAIT_MS["value"] = settings.fetch_max_wait_ms
    # Token files that do not read stop the start here, not a request.
    valid = FilesValid(m.TOKEN_FILES_VALID)
    operator_token = SharedToken("CLEARANCE_HTTP_TOKEN", on_reload=valid.watcher("CLEARANCE_HTTP_TOKEN_FILE"))
    scrape_token = SharedToken("CLEARANCE_METRICS_TOKEN", on_reload=valid.watcher("CLEARANCE_METRICS_TOKEN_FILE"))
    # faust keeps a small data directory per app even with in-memory tables.
    os.makedirs(settings.state_dir, exist_ok=True)
    app = faust.App(
        settings.consumer_group,
        broker="kafka://" + settings.kafka_bootstrap,
        broker_credentials=_credentials(settings),
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 3),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        store="memory://",
        datadir=os.path.join(settings.state_dir, settings.consumer_group),
        table_standby_replicas=0,
        producer_acks=-1,
        stream_buffer_maxsize=settings.stream_buffer,
        broker_max_poll_records=settings.max_poll_records,
    )
    inbound = app.topic(*[registry.topic_name(t, settings) for t in registry.INBOUND],
                        value_serializer="raw", key_serializer="raw")
    reviews = app.topic(registry.topic_name(registry.REVIEWS, settings), value_serializer="raw",
                        key_serializer="raw")
    guarantees = app.topic(registry.topic_name(registry.GUARANTEES, settings), value_serializer="raw",
                           key_serializer="raw")
    holder: dict[str, Any] = {}

    def set_rules(rules: Any) -> None:
        """Swap the rule set; the next batch uses it (a batch in flight keeps its own)."""
        old = holder.get("rules")
        holder["rules"] = rules
        if "p" in holder:
            holder["p"].use_rules(rules)
        if old is not None and old.version != rules.version:
            m.RULESET_INFO.remove(old.version)
            log.warning("rule set %s in force (was %s)", rules.version, old.version)
        m.RULESET_INFO.labels(rules.version).set(1)

    set_rules(initial_rules(settings))

    @app.task
    async def start_rules_feed() -> None:
        loop = asyncio.get_running_loop()
        feed = RulesFeed(settings, lambda rules: loop.call_soon_threadsafe(set_rules, rules))
        feed.start()
        holder["feed"] = feed

    creating = asyncio.Lock()

    async def pipeline() -> Pipeline:
        async with creating:
            return await _pipeline()

    async def _pipeline() -> Pipeline:
        if "p" not in holder:
            # Start deciding only with the rule set the topic holds (bounded wait).
            feed = holder.get("feed")
            deadline = loop_time() + 15
            while feed is not None and not feed.caught_up.is_set() and loop_time() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0)  # let a pending set_rules from the feed run first
            client = state.async_client_for(settings)
            p = Pipeline(settings, client, KafkaSink(settings), holder["rules"])
            try:  # a Redis emptied while no worker ran (ClearanceRedisKeyspaceLost)
                await p.open_keyspace(await asyncio.to_thread(group_has_consumed, settings))
            except Exception as exc:  # Redis down: the batch path fails closed; the sweep looks later
                log.warning("keyspace not checked at start: %s", exc)
            holder["p"] = p
        return holder["p"]

    @app.agent(inbound, name="clearance.ingest")
    async def ingest(stream: Any) -> None:
        async def batches() -> Any:
            async for events in take_batches(stream, settings.batch_max, settings.batch_within_s, ack=False):
                yield events, in_records(events)

        async def work(batch: tuple[list[Any], list[InRecord]]) -> None:
            p = await pipeline()
            for chunk in by_size(batch[1], settings.batch_bytes):
                await process_until_done(p, chunk)

        async def complete(batch: tuple[list[Any], list[InRecord]]) -> None:
            # In arrival order: progress (lag, the timeout watermark) and offsets
            # never run ahead of a batch still in flight.
            (await pipeline()).completed(batch[1])
            for event in batch[0]:
                await stream.ack(event)

        await overlapped(batches(), work, complete, settings.inflight_batches)

    @app.agent(reviews, name="clearance.reviews")
    async def review_results(stream: Any) -> None:
        async for events in take_batches(stream, 500, 0.05):
            p = await pipeline()
            records = in_records(events)
            await process_until_done(p, records, p.review)
            p.completed(records)  # progress, for the lag in seconds

    @app.agent(guarantees, name="clearance.guarantees")
    async def guarantee_events(stream: Any) -> None:
        async for events in take_batches(stream, 100, 0.05):
            p = await pipeline()
            records = in_records(events)
            await process_until_done(p, records, p.after.topup)
            p.completed(records)

    @app.page("/trace/{ident}")
    async def trace_page(web: Any, request: Any, ident: str) -> Any:
        # Lineage shows who declared what: it needs the operator token, and is off without one.
        if not operator_token.required:
            return web.json({"error": "trace is disabled: set CLEARANCE_HTTP_TOKEN"}, status=403)
        if not operator_token.accepts(request.headers.get("Authorization")):
            return web.json({"error": "missing or wrong bearer token"}, status=401)
        from streams import trace

        if "trace_redis" not in holder:  # one client (and pool) for every request, not one each
            holder["trace_redis"] = state.sync_client_for(settings)
        r = holder["trace_redis"]
        t = await asyncio.to_thread(trace.lineage, r, ident, settings.redis_buckets,
                                    request.query.get("ebp") or None, False, request.query.get("pay") or None)
        if t is None:
            return web.json({"error": f"{ident}: not found"}, status=404)
        return web.json(t)

    inbound_names = {registry.topic_name(t, settings) for t in registry.INBOUND}

    @app.timer(interval=1.0, name="clearance.timeouts")
    async def timeouts() -> None:
        try:
            p = await pipeline()
            await p.sweep_timeouts(watermark_ms=local_watermark(app.consumer, p, inbound_names))
        except Exception as exc:  # Redis down: the next tick tries again
            state.forget_scripts()
            m.RETRIES.labels(type(exc).__name__).inc()
            m.DEPENDENCY_ERRORS.labels(dependency_of(exc)).inc()
            log.warning("timeout sweep failed: %s", exc)

    @app.timer(interval=10.0, name="clearance.redis_memory")
    async def redis_memory() -> None:
        # Match state, ledgers and counters live in Redis: a backlog grows it
        # (1.75 GB at the national-peak benchmark). Watched against maxmemory.
        # Also what the gates' outbox holds (ClearanceExitEventsOwed).
        try:
            p = await pipeline()
            used, limit = state.memory_of(await p.redis.info("memory"))
            m.REDIS_USED_MEMORY.set(used)
            m.REDIS_MAX_MEMORY.set(limit)
            # The gates' outbox: exit events owed since a broker or gate failure.
            owed = 0
            for key in state.exit_outbox_keys(settings.redis_buckets):
                owed += int(await p.redis.zcard(key))
            m.GATE_EXITS_OWED.set(owed)
        except Exception as exc:  # unreachable Redis is reported by the batch path and the sweep
            log.debug("redis memory probe failed: %s", exc)

    lag_book, broker_ends = LagBook(), BrokerEnds(settings)
    # The topics the agents read (faust's own assignor topic holds no records to lag on).
    consumed = {registry.topic_name(t, settings) for t in (*registry.INBOUND, registry.REVIEWS, registry.GUARANTEES)}

    @app.timer(interval=2.0, name="clearance.lag")
    async def lag() -> None:
        consumer = app.consumer
        held = [tp for tp in consumer.assignment() if tp.topic in consumed]
        newest = holder["p"].last_record_ms if "p" in holder else {}
        now = int(time.time() * 1000)
        for topic, partition in lag_book.hold(now, ((tp.topic, tp.partition) for tp in held), newest):
            drop_series((m.LAG, m.LAG_SECONDS), topic, str(partition))  # now another worker's to report
        # The broker's own ends as well as the fetcher's: a fetcher that stood
        # still would otherwise freeze the lag at what it last saw.
        ends = await broker_ends.refresh([(tp.topic, tp.partition) for tp in held])
        for tp in held:
            key = (tp.topic, tp.partition)
            try:
                high = consumer.highwater(tp)
                committed = consumer._committed_offset.get(tp)  # faust keeps no public accessor
            except Exception:
                continue
            end = max(high if high is not None else -1, ends.get(key, -1))
            if end < 0:  # neither fetched from nor read from the broker yet
                continue
            records, seconds = lag_book.behind(key, now, end, committed or 0, newest.get(key, 0))
            m.LAG.labels(tp.topic, str(tp.partition)).set(records)
            m.LAG_SECONDS.labels(tp.topic, str(tp.partition)).set(seconds)

    @app.on_before_shutdown.connect
    async def leave_watermark(app: Any, **kwargs: Any) -> None:
        # A worker that stops cleanly stops holding the group's timeout clock at once
        # (a killed one stops counting after WATERMARK_TTL_MS).
        if "p" in holder:
            try:
                await holder["p"].leave()
            except Exception as exc:
                log.warning("could not withdraw the watermark: %s", exc)
            await holder["p"].aclose()

    @app.on_partitions_assigned.connect
    async def on_rebalance(app: Any, *args: Any, **kwargs: Any) -> None:
        m.REBALANCES.inc()  # every completed rebalance assigns (possibly no) partitions

    m.WORKER_INFO.labels(__version__, settings.consumer_group, settings.topic_prefix, settings.redis_namespace).set(1)
    if settings.kafka_ssl_certfile:
        export_expiry(m.TLS_CERT_EXPIRY, "kafka_client", settings.kafka_ssl_certfile)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        operator_token.refresh()  # looked at without a trace request: the files' gauge is current
        if scrape_token.required and not scrape_token.accepts(request.headers.get("Authorization")):
            return web.json({"error": "missing or wrong bearer token"}, status=401)
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        # "assigned" (inbound partitions held) lets a supervisor or a test wait
        # until the group has joined; faust's own leader topic is not counted.
        names = {registry.topic_name(t, settings) for t in registry.INBOUND}
        held = [tp for tp in app.consumer.assignment() if tp.topic in names]
        return web.json({"status": "ok", "assigned": len(held)})

    return app


def local_watermark(consumer: Any, p: Pipeline, topics: set[str]) -> int:
    """How far this worker has read, in record time: the minimum over its inbound
    partitions of the newest record processed, where a caught-up partition counts
    as now and a lagging one not yet read from counts as 0 (hold everything)."""
    now = int(time.time() * 1000)
    mark = now
    for tp in consumer.assignment():
        if tp.topic not in topics:
            continue
        key = (tp.topic, tp.partition)
        high = consumer.highwater(tp)
        done = p.next_offset.get(key)
        if done is None:
            done = consumer._committed_offset.get(tp)  # faust keeps no public accessor
        if high is None or done is None:
            if high == 0:
                continue  # an empty partition is caught up
            mark = min(mark, p.last_record_ms.get(key, 0))
        elif high > done:
            mark = min(mark, p.last_record_ms.get(key, 0))
    return mark


def by_size(records: list[InRecord], max_bytes: int) -> list[list[InRecord]]:
    """Consecutive runs of records whose values stay within max_bytes (each run
    holds at least one record): bounds the memory of a batch in bytes, not records.
    The taken events are acknowledged after the last run."""
    chunks: list[list[InRecord]] = [[]]
    size = 0
    for rec in records:
        n = len(rec.value or b"")
        if chunks[-1] and size + n > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(rec)
        size += n
    return chunks if chunks[0] else []


def in_records(events: Any) -> list[InRecord]:
    """faust events as the pipeline's plain records (faust timestamps are seconds)."""
    return [InRecord(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value,
                     int((e.message.timestamp or 0) * 1000)) for e in events]


def dependency_of(exc: BaseException) -> str:
    """Which dependency a failed batch points at, for the SRE's first question."""
    import redis.exceptions
    from confluent_kafka import KafkaException

    if isinstance(exc, (redis.exceptions.RedisError, ConnectionRefusedError)):
        return "redis"
    if isinstance(exc, KafkaException) or "kafka" in type(exc).__module__:
        return "broker"
    return "other"


def loop_time() -> float:
    return asyncio.get_running_loop().time()


async def process_until_done(pipeline: Pipeline, records: list[InRecord], step: Any = None) -> None:
    """Fail closed: while Redis or the broker fails, retry the same batch with
    backoff; nothing is acknowledged, decided or released on a guess."""
    backoff = 0.1
    retry = False
    while pipeline.halted:  # Redis lost data (CLEARANCE_REDIS_LOSS=halt): held until `clearance resume`
        await asyncio.sleep(0.5)
    while True:
        try:
            if step is None:
                await pipeline.process(records, retry=retry)
            else:
                await step(records)
            return
        except Exception as exc:
            state.forget_scripts()  # Redis may have restarted without them: load again before the retry
            m.RETRIES.labels(type(exc).__name__).inc()
            m.DEPENDENCY_ERRORS.labels(dependency_of(exc)).inc()
            log.warning("batch of %d records failed (%s: %s); retrying in %.1fs",
                        len(records), type(exc).__name__, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            retry = True
