"""One consumed batch in, every effect out: the worker's hot path.

decode → normalise → match (one Redis pipeline) → rules → quota and serials
(one pipeline) → store decisions (one pipeline) → produce and flush →
confirm (one pipeline). Redis round trips are per batch, never per document.

Delivery is at-least-once and every effect is idempotent: the match script
ignores replays, the first stored decision wins, quota is reserved once per
order, and a decision that was stored but not confirmed emitted is re-emitted
by whoever sees the order next (a replayed document or the timeout sweep).
"""
from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from config.settings import Settings
from processors import decide, receipts
from processors.documents import DOC_TYPES, normalise
from processors.rules import REJECT, Case, Hit, RuleSet
from streams import metrics as m
from streams import state
from topics import ceb, registry

log = logging.getLogger("clearance.pipeline")

# A decision stored but not confirmed emitted for this long is re-emitted.
STALE_MS = 3_000


@dataclass
class InRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class Sink(Protocol):
    def produce(self, topic: str, key: str, value: bytes) -> None: ...

    async def flush(self) -> None: ...


@dataclass
class _Doc:
    order_key: str
    order_no: str
    doc: dict[str, Any]
    meta: dict[str, Any]
    payload: bytes


@dataclass
class _Pending:
    """An order whose decision this batch computes."""

    order_key: str
    order_no: str
    docs: dict[str, dict[str, Any]]
    metas: dict[str, dict[str, Any]]
    first_ms: int
    complete: bool
    hits: list[Hit] = field(default_factory=list)
    quota: decide.QuotaRequest | None = None
    decision: dict[str, Any] | None = None


class Pipeline:
    def __init__(self, settings: Settings, redis: Any, sink: Sink, rules: RuleSet | None = None):
        self.settings = settings
        self.redis = redis
        self.scripts = state.Scripts(redis)
        self.sink = sink
        self.rules: RuleSet = rules or decide.SpineRules()
        self.pii_key = settings.pii_key.encode()
        self.inbound = registry.inbound_by_name(settings)
        t = registry.topic_name
        self.t_decisions = t(registry.DECISIONS, settings)
        self.t_release = t(registry.RELEASE, settings)
        self.t_receipts = t(registry.RECEIPTS, settings)
        self.t_deadletter = t(registry.DEADLETTER, settings)
        self.timeout_ms = int(settings.match_timeout_s * 1000)

    # ------------------------------------------------------------------ batch

    async def process(self, records: list[InRecord], retry: bool = False) -> None:
        """Process one batch. On a retry of a failed batch, decisions that an
        earlier attempt stored but did not confirm are re-emitted at once."""
        stale = 0 if retry else STALE_MS
        started = time.perf_counter()
        now = int(time.time() * 1000)
        docs: list[_Doc] = []
        out_receipts: list[dict[str, Any]] = []
        for rec in records:
            m.RECORDS.labels(rec.topic).inc()
            docs.extend(self._decode(rec, now, out_receipts))

        pending: dict[str, _Pending] = {}
        reemit: dict[str, tuple[bytes, list[Any]]] = {}
        zadds: list[_Doc] = []
        if docs:
            pipe = self.redis.pipeline(transaction=False)
            for d in docs:
                await self.scripts.match(keys=[d.order_key], args=[d.doc["type"], d.payload, orjson.dumps(d.meta),
                                                             now, stale], client=pipe)
            replies = await pipe.execute()
            for d, reply in zip(docs, replies):
                self._on_match(d, reply, now, out_receipts, pending, reemit, zadds)

        await self._decide(pending, now, zadds)
        await self._emit(pending, reemit, out_receipts, now)
        m.BATCH_SECONDS.observe(time.perf_counter() - started)

    def _decode(self, rec: InRecord, now: int, out_receipts: list[dict[str, Any]]) -> list[_Doc]:
        spec = self.inbound.get(rec.topic)
        value = rec.value or b""
        fmt = "xml" if value[:64].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<") else "json"
        try:
            msg = ceb.decode(value, spec.accepts if spec is not None else None)
            out = []
            for raw in msg.documents:
                doc = normalise(raw.kind, raw.head, raw.lines, self.pii_key)
                order_no = str(doc["head"].get("orderNo", ""))
                meta = {"fmt": msg.fmt, "snd": msg.sender, "at": now, "rts": rec.timestamp_ms,
                        "src": f"{rec.topic}:{rec.partition}:{rec.offset}"}
                out.append(_Doc(state.order_key(order_no), order_no, doc, meta,
                                orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)))
                m.DOCUMENTS.labels(raw.kind, msg.fmt).inc()
            return out
        except ceb.CebError as exc:
            self._reject(rec, exc.status, exc.reason, exc.info, exc.message_type, fmt, now, out_receipts)
        except Exception as exc:  # a bug must not stop the stream: dead-letter the record
            log.exception("unexpected error decoding %s:%s:%s", rec.topic, rec.partition, rec.offset)
            self._reject(rec, "-9", "internal_error", f"internal error: {type(exc).__name__}", "Unknown",
                         fmt, now, out_receipts)
        return []

    def _reject(self, rec: InRecord, status: str, reason: str, info: str, message_type: str, fmt: str,
                now: int, out_receipts: list[dict[str, Any]]) -> None:
        m.ERRORS.labels(reason).inc()
        m.DEADLETTERS.labels(reason).inc()
        sender = (rec.key or b"").decode("utf-8", "replace")[:64]
        out_receipts.append(receipts.error_receipt(sender, fmt, status, info, message_type,
                                                   f"{rec.topic}:{rec.partition}:{rec.offset}", now))
        record = {
            "source": {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset,
                       "timestamp": rec.timestamp_ms},
            "reason": reason, "returnStatus": status, "info": info, "messageType": message_type,
            "key": base64.b64encode(rec.key).decode() if rec.key else None,
            "value": base64.b64encode(rec.value or b"").decode(),
            "rejectedAt": now,
        }
        # Keyed by source partition so one sender's rejects stay in order.
        self.sink.produce(self.t_deadletter, f"{rec.topic}:{rec.partition}", orjson.dumps(record))

    def _on_match(self, d: _Doc, reply: list[Any], now: int, out_receipts: list[dict[str, Any]],
                  pending: dict[str, _Pending], reemit: dict[str, tuple[bytes, list[Any]]],
                  zadds: list[_Doc]) -> None:
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "C":
            m.DUPLICATES.labels("conflict").inc()
            out_receipts.append(receipts.conflict_receipt(d.doc, d.meta, now))
            return
        if status == "D":
            m.DUPLICATES.labels("after_decision").inc()
            decision = orjson.loads(reply[1])
            out_receipts.extend(receipts.decision_receipts(decision, {d.doc["type"]: d.doc},
                                                           {d.doc["type"]: d.meta}, now))
            return
        if status == "R":
            reemit[d.order_key] = (reply[1], reply[2:])
            return
        if status == "S":
            m.DUPLICATES.labels("identical").inc()
        out_receipts.append(receipts.arrival_receipt(d.doc, d.meta, now))
        if status == "M":
            first, raw_docs, raw_metas = state.split_docs(reply[1:])
            pending[d.order_key] = _Pending(
                d.order_key, d.order_no, {t: orjson.loads(v) for t, v in raw_docs.items()},
                {t: orjson.loads(v) for t, v in raw_metas.items()}, first, complete=True)
        else:
            zadds.append(d)

    # ------------------------------------------------------------------ decide

    async def _decide(self, pending: dict[str, _Pending], now: int, zadds: list[_Doc] | None = None) -> None:
        """Rules, then one pipeline for pending-set entries, quota and serial numbers."""
        for p in pending.values():
            if not p.complete:
                continue
            case = self._case(p)
            try:
                p.hits = self.rules.evaluate(case)
            except Exception:  # fail closed: a broken rule sends the order to an officer
                log.exception("rule evaluation failed for an order")
                m.ERRORS.labels("rule_error").inc()
                p.hits = [Hit("engine.error", "RULE_EVALUATION_FAILED", 300,
                              "a rule could not be evaluated; manual review")]
            if decide.needs_quota(p.hits):
                p.quota = decide.quota_request(case, p.order_key)

        pipe = self.redis.pipeline(transaction=False)
        for d in zadds or ():
            pipe.zadd(state.pending_key(d.order_no), {d.order_key: now}, nx=True)
        quota_orders = [p for p in pending.values() if p.quota is not None]
        for p in quota_orders:
            q = p.quota
            assert q is not None
            await self.scripts.reserve(keys=[state.ledger_key(q.buyer, q.year)],
                                 args=[q.order, q.amount_cents, q.limit_cents, state.LEDGER_TTL_S], client=pipe)
        serial_groups: dict[str, list[_Pending]] = {}
        for p in pending.values():
            if p.complete:
                inv = p.docs["621"]["head"]
                skey = state.serial_key(str(inv.get("customsCode", "0000")), decide.cst_stamp(now, 4))
                serial_groups.setdefault(skey, []).append(p)
        for skey, group in serial_groups.items():
            pipe.incrby(skey, len(group))
        replies = await pipe.execute() if len(pipe) else []
        replies = replies[len(zadds or ()):]
        quota_results = {}
        for p, reply in zip(quota_orders, replies):
            quota_results[p.order_key] = (int(reply[0]), int(reply[1]))
        serial_replies = replies[len(quota_orders):]
        serials: dict[str, int] = {}
        for (skey, group), last in zip(serial_groups.items(), serial_replies):
            for i, p in enumerate(group):
                serials[p.order_key] = int(last) - len(group) + 1 + i

        for p in pending.values():
            if not p.complete:
                p.decision = decide.timeout_decision(p.order_key, p.docs, p.first_ms, now,
                                                     self.settings.match_timeout_s)
                continue
            quota_info = None
            if p.quota is not None:
                ok, used_before = quota_results[p.order_key]
                quota_info = {"year": p.quota.year, "reserved": bool(ok),
                              "usedBefore": used_before, "amount": p.quota.amount_cents}
                if not ok:
                    p.hits.append(decide.annual_limit_hit(p.quota, used_before))
            invt_no, pre_no = decide.assign_numbers(p.docs["621"], serials[p.order_key], now)
            p.decision = decide.build_decision(self._case(p), p.order_key, p.hits, self.rules.version,
                                               invt_no, pre_no, now, quota_info)

    @staticmethod
    def _case(p: _Pending) -> Case:
        completing = max(p.metas.values(), key=lambda mt: mt.get("at", 0), default={})
        return Case(p.docs, p.first_ms, int(completing.get("at", p.first_ms)),
                    int(completing.get("rts", p.first_ms)))

    # ------------------------------------------------------------------ emit

    async def _emit(self, pending: dict[str, _Pending], reemit: dict[str, tuple[bytes, list[Any]]],
                    out_receipts: list[dict[str, Any]], now: int) -> None:
        to_emit: list[tuple[str, str, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        unreserve: list[decide.QuotaRequest] = []
        decided = [p for p in pending.values() if p.decision is not None]
        if decided:
            pipe = self.redis.pipeline(transaction=False)
            for p in decided:
                await self.scripts.store(keys=[p.order_key], args=[orjson.dumps(p.decision), now], client=pipe)
            for p, reply in zip(decided, await pipe.execute()):
                assert p.decision is not None
                if int(reply[0]) == 1:
                    to_emit.append((p.order_key, p.order_no, p.decision, p.docs, p.metas))
                else:
                    # Another worker decided first; its decision stands. Give back
                    # quota this batch reserved if the standing decision is a reject.
                    standing = orjson.loads(reply[1])
                    if p.quota is not None and standing["status"] == REJECT:
                        unreserve.append(p.quota)
        for order_key, (dec_raw, tail) in reemit.items():
            decision = orjson.loads(dec_raw)
            _, raw_docs, raw_metas = state.split_docs(tail)
            to_emit.append((order_key, decision["orderNo"], decision,
                            {t: orjson.loads(v) for t, v in raw_docs.items()},
                            {t: orjson.loads(v) for t, v in raw_metas.items()}))

        for order_key, order_no, decision, docs, metas in to_emit:
            self.sink.produce(self.t_decisions, decision["decisionId"], orjson.dumps(decision))
            event = decide.release_event(decision)
            if event is not None:
                self.sink.produce(self.t_release, event.get("logisticsNo", order_no), orjson.dumps(event))
            out_receipts.extend(receipts.decision_receipts(decision, docs, metas, now))
        for r in out_receipts:
            m.RECEIPTS.labels(r["type"], r["body"]["returnStatus"]).inc()
        for key, value in ceb.encode_receipts(out_receipts):
            self.sink.produce(self.t_receipts, key, value)
        await self.sink.flush()

        if to_emit or unreserve:
            pipe = self.redis.pipeline(transaction=False)
            for order_key, order_no, _d, _docs, _metas in to_emit:
                await self.scripts.confirm(keys=[order_key], args=[self.settings.decided_ttl_s], client=pipe)
                pipe.zrem(state.pending_key(order_no), order_key)
            for q in unreserve:
                await self.scripts.unreserve(keys=[state.ledger_key(q.buyer, q.year)], args=[q.order], client=pipe)
            await pipe.execute()
        done = int(time.time() * 1000)
        for _k, _o, decision, _docs, _metas in to_emit:
            status = decision["status"]
            m.DECISIONS.labels(str(status), decision["outcome"]).inc()
            for rule in decision["rules"]:
                m.RULE_HITS.labels(rule).inc()
            for t in decision.get("missing", ()):
                m.TIMEOUTS.labels(t).inc()
            rts = decision["timestamps"].get("completingRecord")
            if rts:
                m.LATENCY.observe(max(0, done - rts) / 1000)

    # ------------------------------------------------------------------ timeouts

    async def sweep_timeouts(self, limit: int = 500) -> int:
        """Decide incomplete matches older than the timeout; re-emit unconfirmed ones."""
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        for key in state.pending_keys():
            pipe.zrangebyscore(key, 0, now - self.timeout_ms, start=0, num=limit)
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
        replies = await pipe.execute()
        candidates: list[tuple[str, str]] = []
        total = 0
        oldest = now
        for i, key in enumerate(state.pending_keys()):
            due, card, first = replies[3 * i], replies[3 * i + 1], replies[3 * i + 2]
            total += int(card)
            if first:
                oldest = min(oldest, int(first[0][1]))
            candidates.extend((key, k.decode()) for k in due)
        m.PENDING.set(total)
        m.OLDEST_PENDING.set((now - oldest) / 1000)
        if not candidates:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for _pkey, okey in candidates:
            await self.scripts.timeout(keys=[okey], args=[now, self.timeout_ms, STALE_MS], client=pipe)
        replies = await pipe.execute()
        pending: dict[str, _Pending] = {}
        reemit: dict[str, tuple[bytes, list[Any]]] = {}
        drop = []
        for (pkey, okey), reply in zip(candidates, replies):
            status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
            if status == "X":
                drop.append((pkey, okey))
            elif status == "R":
                reemit[okey] = (reply[1], reply[2:])
            elif status == "T":
                first, raw_docs, raw_metas = state.split_docs(reply[1:])
                order_no = okey[len("clr:o:{"):-1]
                # All four present but undecided means a worker died between match
                # and decision: decide it as a complete match, not a timeout.
                pending[okey] = _Pending(okey, order_no, {t: orjson.loads(v) for t, v in raw_docs.items()},
                                         {t: orjson.loads(v) for t, v in raw_metas.items()}, first,
                                         complete=len(raw_docs) == len(DOC_TYPES))
        if drop:
            pipe = self.redis.pipeline(transaction=False)
            for pkey, okey in drop:
                pipe.zrem(pkey, okey)
            await pipe.execute()
        await self._decide(pending, now)
        await self._emit(pending, reemit, [], now)
        return len(pending) + len(reemit)




__all__ = ["InRecord", "Pipeline", "Sink", "DOC_TYPES"]
