"""One consumed batch in, every effect out: the worker's hot path.

decode → normalise → match → rules → quota and serial numbers → store
decisions → produce and flush → confirm. Each Redis step is one pipeline of
one script call per slot bucket (streams/state.py): round trips are per
batch, never per document.

Delivery is at-least-once and every effect is idempotent: the match script
ignores replays, the first stored decision wins, quota is reserved once per
order, and a decision that was stored but not confirmed emitted is re-emitted
by whoever sees the order next (a replayed document or the timeout sweep),
unless a batch of the same worker is still producing it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from config.settings import Settings
from processors import decide, features, receipts
from processors.documents import DOC_TYPES, normalise
from processors.rules import REJECT, REVIEW, Case, Hit, RuleSet
from streams import deadletter
from streams import metrics as m
from streams import resp
from streams import state
from topics import ceb, registry

log = logging.getLogger("clearance.pipeline")

# A worker that has not reported its watermark for this long has left the group.
WATERMARK_TTL_MS = 15_000
# A deployment none of whose workers has swept for this long no longer uses the database.
DEPLOYMENT_TTL_MS = 60_000
# A decision stored but not confirmed emitted for this long is re-emitted.
STALE_MS = 3_000
# The timeout sweep runs beside the batches of the same worker; under a backlog
# a batch can hold a stored decision longer than STALE_MS before confirming it.
SWEEP_STALE_MS = 60_000
# Cancels and returns act on decided lists; they do not enter the match.
AFTER_TYPES = ("623", "625")


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
    order_key: str  # the waybill key for a 511 (state.MATCH)
    doc: dict[str, Any]
    meta: dict[str, Any]
    payload: bytes  # the canonical document as stored
    meta_raw: bytes  # its arrival metadata as stored
    app: str = "1"  # appType: 1 add, 2 change, 3 delete
    aux: str = ""  # a 621's waybill key; the document's own key for the others


def _keys(t: str, head: dict[str, Any], buckets: int) -> tuple[str, str]:
    """A document's two keys for MATCH (see there)."""
    order_no = str(head.get("orderNo", ""))
    if t == "511":
        key = state.waybill_key_of(order_no, head, buckets)
        return key, key
    key = state.order_key(str(head.get("ebpCode", "")), order_no, buckets)
    return key, state.waybill_key_of(order_no, head, buckets) if t == "621" else key


@dataclass
class _Pending:
    """An order whose decision this batch computes."""

    order_key: str
    docs: dict[str, dict[str, Any]]
    metas: dict[str, dict[str, Any]]
    first_ms: int
    complete: bool
    hits: list[Hit] = field(default_factory=list)
    case: Case | None = None  # type: ignore[assignment]
    quotas: list[decide.QuotaRequest] = field(default_factory=list)
    reserved: list[decide.QuotaRequest] = field(default_factory=list)
    quota_info: dict[str, Any] | None = None
    wanted: list[decide.Claim] = field(default_factory=list)  # numbers to hold alone (R9)
    claims: list[str] = field(default_factory=list)  # claim keys it holds
    decision: dict[str, Any] | None = None


@dataclass
class _Emit:
    order_key: str
    decision: dict[str, Any]
    docs: dict[str, dict[str, Any]]
    metas: dict[str, dict[str, Any]]
    raw: bytes | None = None  # the decision as stored (by this batch, or before: a re-emission)


def _loads_all(raw: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    return {t: orjson.loads(v) for t, v in raw.items()}


class Pipeline:
    def __init__(self, settings: Settings, redis: Any, sink: Sink, rules: RuleSet | None = None):
        self.settings = settings
        self.redis = redis
        state.use_namespace(settings.redis_namespace)  # the client may come from elsewhere (tests)
        self.scripts = state.Scripts(redis)
        # The batch's own round trips (streams/resp.py); redis-py for the rest.
        self.batches = resp.Client.like(redis)
        self.batches.require_replicas(settings.redis_wait_replicas, settings.redis_wait_ms)
        self.sink = sink
        self.rules: RuleSet = rules or decide.SpineRules()
        self.exported_signers: dict[str, str] = {}  # copCode -> the card whose expiry is exported
        self.pii_key = settings.pii_key.encode()
        self.signatures = settings.signatures == "verify"
        self.buckets = settings.redis_buckets
        self.inbound = registry.inbound_by_name(settings)
        t = registry.topic_name
        self.t_decisions = t(registry.DECISIONS, settings)
        self.t_release = t(registry.RELEASE, settings)
        self.t_receipts = t(registry.RECEIPTS, settings)
        self.t_deadletter = t(registry.DEADLETTER, settings)
        self.timeout_ms = int(settings.match_timeout_s * 1000)
        # Newest record timestamp and offset processed per (topic, partition): lag in
        # seconds, and the watermark that holds match timeouts back under a backlog.
        self.last_record_ms: dict[tuple[str, int], int] = {}
        self.next_offset: dict[tuple[str, int], int] = {}
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        # Orders whose decision a batch of this worker is producing and has not
        # yet confirmed (batches overlap: streams/batching.py).
        self.emitting: set[str] = set()
        self.horizon_ms = 0
        self.watermark_key = state.watermark_key(settings.consumer_group)
        # What this deployment is known by in Redis: its topics' prefix.
        self.deployment = settings.topic_prefix
        self.warned_deployments: list[str] = []
        # The value of the keyspace's markers (state.epoch_keys) this worker
        # found or wrote; None until it has looked (open_keyspace, or its first sweep).
        self.epoch: str | None = None
        # Why every worker of the namespace stopped deciding (CLEARANCE_REDIS_LOSS=halt),
        # as the halt key says; read by each sweep. None: deciding.
        self.halted: str | None = None
        from streams.aftercare import Aftercare

        self.after = Aftercare(self)

    # ------------------------------------------------------------------ batch

    async def process(self, records: list[InRecord], retry: bool = False) -> None:
        """Process one batch. On a retry of a failed batch, decisions that an
        earlier attempt stored but did not confirm are re-emitted at once."""
        started = time.perf_counter()
        now = int(time.time() * 1000)
        out_receipts: list[dict[str, Any]] = []
        docs: list[_Doc] = []
        counts: Counter[tuple[str, str]] = Counter()
        pii_memo: dict[str, str] = {}  # this batch's personal values -> their hashes (normalise)
        for rec in records:
            m.RECORDS.labels(rec.topic).inc()
            docs.extend(self._decode(rec, now, out_receipts, counts, pii_memo))
        pii_memo.clear()
        m.BATCH_RECORDS.observe(len(records))
        after_docs = [d for d in docs if d.doc["type"] in AFTER_TYPES]
        if after_docs:
            docs = [d for d in docs if d.doc["type"] not in AFTER_TYPES]
            await self.after.handle(after_docs, now, out_receipts)
        t_decoded = time.perf_counter()
        m.STAGE_SECONDS.labels("decode").observe(t_decoded - started)
        for (t, fmt), n in counts.items():
            m.DOCUMENTS.labels(t, fmt).inc(n)

        pending: dict[str, _Pending] = {}
        reemit: dict[str, _Emit] = {}
        if docs:
            groups = state.group_by_slot(docs, lambda d: d.order_key)
            pipe = self.batch()
            for tag, group in groups.items():
                args: list[Any] = [now, 0 if retry else STALE_MS]
                keys = [state.NS + ":p:" + tag]
                for d in group:
                    args += (d.doc["type"], d.payload, d.meta_raw, hashlib.sha1(d.payload).hexdigest(), d.app)
                    keys += (d.order_key, d.aux)
                await self.scripts.match(keys=keys, args=args, client=pipe)
            # A match completed in this batch mostly needs documents this batch
            # decoded (the four types of a set of orders arrive close together):
            # MATCH names those it stored from this call by their position in
            # the call instead of sending them back, and they are reused here.
            for group, replies in zip(groups.values(), await pipe.execute()):
                for d, reply in zip(group, state.match_replies(replies)):
                    self._on_match(d, reply, now, out_receipts, pending, reemit, group)
        t_matched = time.perf_counter()
        m.STAGE_SECONDS.labels("match").observe(t_matched - t_decoded)
        await self._decide(pending, now)
        t_decided = time.perf_counter()
        m.STAGE_SECONDS.labels("decide").observe(t_decided - t_matched)
        await self._emit(pending, reemit, out_receipts, now)
        done = time.perf_counter()
        m.STAGE_SECONDS.labels("emit").observe(done - t_decided)
        m.BATCH_SECONDS.observe(done - started)

    def completed(self, records: list[InRecord]) -> None:
        """Progress counts once a batch's effects are out and every batch before
        it is done (the caller's order): lag in seconds and the timeout watermark."""
        for rec in records:
            tp = (rec.topic, rec.partition)
            self.last_record_ms[tp] = max(self.last_record_ms.get(tp, 0), rec.timestamp_ms)
            self.next_offset[tp] = max(self.next_offset.get(tp, 0), rec.offset + 1)

    def _decode(self, rec: InRecord, now: int, out_receipts: list[dict[str, Any]],
                counts: Counter[tuple[str, str]], pii_memo: dict[str, str] | None = None) -> list[_Doc]:
        spec = self.inbound.get(rec.topic)
        value = rec.value or b""
        try:
            msg = ceb.decode(value, spec.accepts if spec is not None else None, signatures=self.signatures)
            out = []
            # Every document of a record arrived together: one arrival, shared (read only).
            meta = {"fmt": msg.fmt, "snd": msg.sender, "at": now, "rts": rec.timestamp_ms,
                    "src": f"{rec.topic}:{rec.partition}:{rec.offset}"}
            if msg.cop_code or msg.dxp_id:  # an XML message's BaseTransfer: who says it sent it (R13)
                meta["cop"], meta["dxp"] = msg.cop_code, msg.dxp_id
            if msg.signer:  # the certificate whose signature verified (R13: is it the copCode's?)
                meta["sig"] = msg.signer
                self._signer_seen(msg)
            if msg.subscribers:  # nodes that get a copy of its receipts
                meta["sub"] = list(msg.subscribers)
            if msg.envelope is not None:  # the sender's id of the message: what it will ask about
                meta["cmi"] = msg.envelope.cop_msg_id
            meta_raw = orjson.dumps(meta)
            for raw in msg.documents:
                doc = normalise(raw.kind, raw.head, raw.lines, self.pii_key, pii_memo)
                head = doc["head"]
                key, aux = _keys(doc["type"], head, self.buckets)
                out.append(_Doc(key, doc, meta, orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), meta_raw,
                                head.get("appType") or "1", aux))
            counts[(msg.kind, msg.fmt)] += len(msg.documents)
            return out
        except ceb.CebError as exc:
            self._reject(rec, exc.status, exc.reason, exc.info, exc.message_type, now, out_receipts, exc.envelope)
        except Exception as exc:  # a bug must not stop the stream: dead-letter the record
            log.exception("unexpected error decoding %s:%s:%s", rec.topic, rec.partition, rec.offset)
            self._reject(rec, "-9", "internal_error", f"internal error: {type(exc).__name__}", "Unknown",
                         now, out_receipts)
        return []

    def register(self) -> dict[str, Any]:
        """The enterprise register of the rule set in force ({} for the
        spine's rules, which have none)."""
        reference = getattr(self.rules, "reference", None)
        return reference.enterprises if reference is not None else {}

    def _signer_seen(self, msg: ceb.DecodedMessage) -> None:
        # When a registered card expires, every list its enterprise signs is
        # refused: exported for an alert weeks before. Registered cards only:
        # a copCode is the sender's word, and the label set stays the register's.
        if msg.signer in features.registered_certs(self.register(), msg.cop_code):
            m.SIGNER_EXPIRY.labels(msg.cop_code).set(msg.signer_expires)
            self.exported_signers[msg.cop_code] = msg.signer

    def use_rules(self, rules: RuleSet) -> None:
        """Put a new rule set in force for the next batch. An exported expiry
        whose card the new register no longer lists for its copCode is
        withdrawn: a card taken off the register would otherwise keep its
        label, and its alert, until the worker restarts."""
        self.rules = rules
        register = self.register()
        for cop, signer in list(self.exported_signers.items()):
            if signer not in features.registered_certs(register, cop):
                del self.exported_signers[cop]
                m.SIGNER_EXPIRY.remove(cop)

    def _reject(self, rec: InRecord, status: str, reason: str, info: str, message_type: str, now: int,
                out_receipts: list[dict[str, Any]], envelope: ceb.Envelope | None = None) -> None:
        # The error receipt goes back in the form the sender used: to the node
        # that sent a DxpMsg, naming its CopMsgId, once the envelope was read.
        value = rec.value or b""
        fmt = "xml" if value[:64].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<") else "json"
        if fmt == "xml" and (envelope is not None or ceb.looks_enveloped(value)):
            fmt = "dxp"
        m.ERRORS.labels(reason).inc()
        m.DEADLETTERS.labels(reason).inc()
        sender = envelope.sender_id if envelope else (rec.key or b"").decode("utf-8", "replace")[:64]
        ori = envelope.cop_msg_id if envelope else f"{rec.topic}:{rec.partition}:{rec.offset}"
        out_receipts.append(receipts.error_receipt(sender, fmt, status, info, message_type, ori, now))
        record = deadletter.record(rec.topic, rec.partition, rec.offset, rec.timestamp_ms, rec.key, rec.value or b"",
                                   reason, status, info, message_type, now, envelope)
        self.sink.produce(self.t_deadletter, f"{rec.topic}:{rec.partition}", record)

    @staticmethod
    def _after_decision(d: _Doc, decision: dict[str, Any], now: int, out_receipts: list[dict[str, Any]]) -> None:
        if d.app in ("2", "3"):  # a change or delete of a decided order
            m.ERRORS.labels("change_after_decision").inc()
            out_receipts.append(receipts.too_late_receipt(d.doc, d.meta, decision, now))
            return
        m.DUPLICATES.labels("after_decision").inc()
        out_receipts.extend(receipts.decision_receipts(decision, {d.doc["type"]: d.doc},
                                                       {d.doc["type"]: d.meta}, now))

    def _on_match(self, d: _Doc, reply: list[Any], now: int, out_receipts: list[dict[str, Any]],
                  pending: dict[str, _Pending], reemit: dict[str, _Emit],
                  call: list[_Doc]) -> None:
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "C":
            m.DUPLICATES.labels("conflict").inc()
            out_receipts.append(receipts.conflict_receipt(d.doc, d.meta, now))
        elif status == "O":
            m.ERRORS.labels("waybill_taken").inc()
            out_receipts.append(receipts.waybill_taken_receipt(d.doc, d.meta, now))
        elif status == "D":
            self._after_decision(d, orjson.loads(reply[1]), now, out_receipts)
        elif status == "X":  # deleted (appType 3) before the decision
            m.AMENDMENTS.labels(d.doc["type"], "delete").inc()
            out_receipts.append(receipts.arrival_receipt(d.doc, d.meta, now))
        elif status == "N":
            m.ERRORS.labels("nothing_to_delete").inc()
            out_receipts.append(receipts.nothing_to_delete_receipt(d.doc, d.meta, now))
        elif status == "L":  # a change or delete behind the document that completed the order
            m.ERRORS.labels("change_after_decision").inc()
            out_receipts.append(receipts.too_late_receipt(d.doc, d.meta, None, now))
        elif status == "R":  # the order's key comes back: a waybill's is not the one sent
            key = reply[1].decode()
            if key in self.emitting:
                # Stored but unconfirmed because an earlier batch of this very
                # worker is still sending it (a slow broker): that batch
                # confirms it, or fails and is retried. A second copy would
                # only reach the gates twice.
                self._after_decision(d, orjson.loads(reply[2]), now, out_receipts)
                return
            _, raw_docs, raw_metas = state.split_docs(reply[3:])
            reemit[key] = _Emit(key, orjson.loads(reply[2]), _loads_all(raw_docs), _loads_all(raw_metas), reply[2])
        else:
            if status == "S":
                m.DUPLICATES.labels("identical").inc()
            elif d.app == "2":
                m.AMENDMENTS.labels(d.doc["type"], "change").inc()
            out_receipts.append(receipts.arrival_receipt(d.doc, d.meta, now))
            if status == "M":
                key, first = reply[1].decode(), int(reply[2] or 0)
                docs, metas = {}, {}
                for i, t in enumerate(DOC_TYPES):
                    body, arrival = reply[3 + 2 * i], reply[4 + 2 * i]
                    if isinstance(body, int):  # stored from this call: its position in the call
                        near = call[body - 1]
                        docs[t], metas[t] = near.doc, near.meta
                    else:
                        docs[t] = orjson.loads(body)
                        if arrival is not None:
                            metas[t] = orjson.loads(arrival)
                pending[key] = _Pending(key, docs, metas, first, complete=True)

    # ------------------------------------------------------------------ decide

    async def _decide(self, pending: dict[str, _Pending], now: int) -> None:
        """Cross-order features (one pipeline, when the rule set asks for them),
        rules, then one pipeline for ledger reservations and serial numbers."""
        rules = self.rules  # one rule set for the whole batch, even if a new one arrives meanwhile
        complete = [p for p in pending.values() if p.complete]
        for p in complete:
            p.case = self._case(p)
        if complete and hasattr(rules, "observations"):
            await self._observe_features(rules, complete, now)
        for p in complete:
            try:
                p.hits = rules.evaluate(p.case)
            except Exception:  # fail closed: a broken rule sends the order to an officer
                log.exception("rule evaluation failed for an order")
                m.ERRORS.labels("rule_error").inc()
                p.hits = [Hit("engine.error", "RULE_EVALUATION_FAILED", REVIEW,
                              "a rule could not be evaluated; manual review")]
            if decide.needs_quota(p.hits):
                p.quotas = (rules.quota_requests(p.case, p.order_key) if hasattr(rules, "quota_requests")
                            else [decide.quota_request(p.case, p.order_key)])
                p.wanted = decide.unique_claims(p.case, self.settings.unique_kinds)

        requests = [(p, q, self._ledger(q)) for p in complete for q in p.quotas]
        quota_groups = state.group_by_slot(requests, lambda pqk: pqk[2])
        serial_groups: dict[str, list[_Pending]] = {}
        for p in complete:
            inv = p.docs["621"]["head"]
            skey = state.serial_key(str(inv.get("customsCode", "0000")), decide.cst_stamp(now, 4))
            serial_groups.setdefault(skey, []).append(p)
        claims = [(p, c, state.claim_key(c.kind, c.issuer, c.number, self.buckets)) for p in complete
                  for c in p.wanted]
        claim_groups = state.group_by_slot(claims, lambda pck: pck[2])
        serials: dict[str, int] = {}
        if quota_groups or serial_groups or claim_groups:
            pipe = self.batch()
            for group in quota_groups.values():
                args: list[Any] = [state.LEDGER_TTL_S]
                for _p, q, _k in group:
                    args += (q.order, q.amount, q.limit)
                await self.scripts.reserve(keys=[k for _p, _q, k in group], args=args, client=pipe)
            floor = decide.serial_floor(now)
            for skey, sgroup in serial_groups.items():
                pipe.execute_command("SET", skey, floor, "NX")  # a new year's counter, or one Redis lost
                pipe.incrby(skey, len(sgroup))
            for cgroup in claim_groups.values():
                await self.scripts.claim(keys=[k for _p, _c, k in cgroup],
                                         args=[self.settings.unique_ttl_s] + [p.order_key for p, _c, _k in cgroup],
                                         client=pipe)
            replies = await pipe.execute()
            for group, reply in zip(quota_groups.values(), replies):
                for (p, q, _k), (ok, used) in zip(group, state.pairs(reply)):
                    if int(ok):
                        p.reserved.append(q)
                    else:
                        p.hits.append(decide.quota_hit(q, int(used)))
                    if not q.ledger:
                        p.quota_info = {"year": q.year, "reserved": bool(int(ok)), "usedBefore": int(used),
                                        "amount": q.amount}
            after_serials = len(quota_groups) + 2 * len(serial_groups)
            for sgroup, last in zip(serial_groups.values(), replies[len(quota_groups) + 1:after_serials:2]):
                for i, p in enumerate(sgroup):
                    serials[p.order_key] = int(last) - len(sgroup) + 1 + i
            for cgroup, creplies in zip(claim_groups.values(), replies[after_serials:]):
                for (p, c, k), holder in zip(cgroup, creplies):
                    if holder == 1:
                        p.claims.append(k)
                    else:
                        p.hits.append(decide.duplicate_hit(c, state.order_id(state.as_text(holder))))

        # The decision's own time: when the rules have answered, not when the batch began.
        decided = int(time.time() * 1000)
        for p in pending.values():
            if not p.complete:
                p.decision = decide.timeout_decision(p.order_key, p.docs, p.first_ms, decided,
                                                     self.settings.match_timeout_s)
                continue
            invt_no, pre_no = decide.assign_numbers(p.docs["621"], serials[p.order_key], decided)
            if p.quota_info is not None:
                p.quota_info["ledgers"] = [q.ledger for q in p.reserved]
            p.decision = decide.build_decision(p.case, p.order_key, p.hits, rules.version,
                                               invt_no, pre_no, decided, p.quota_info)
            p.decision["receipt"] = receipts.receipt_address(p.docs["621"], p.metas.get("621", {}))
            if p.claims and p.decision["status"] != REJECT:
                # Held while the order may still leave; given back by a later reject or cancel.
                # A reject now gives them back when it is stored (_emit).
                p.decision["claims"] = p.claims
            if hasattr(rules, "decision_extras"):
                p.decision.update(rules.decision_extras(p.case))
        await self.after.charge([p.decision for p in complete if p.decision is not None], now)

    async def _observe_features(self, rules: Any, orders: list[_Pending], now: int) -> None:
        """Update and read the windowed cross-order counters the rules use."""
        obs = [(p, o, state.feature_key(o.family, o.entity, self.buckets))
               for p in orders for o in rules.observations(p.case, p.order_key)]
        groups = state.group_by_slot(obs, lambda pok: pok[2])
        pipe = self.batch()
        for group in groups.values():
            args: list[Any] = [now]
            for _p, o, _k in group:
                args += (o.family, o.member)
            await self.scripts.observe(keys=[k for _p, _o, k in group], args=args, client=pipe)
        for group, replies in zip(groups.values(), await pipe.execute()):
            for (p, o, _k), reply in zip(group, state.feature_replies((o.family for _p, o, _k in group), replies)):
                p.case.features.update(state.feature_values(o.family, reply))

    async def aclose(self) -> None:
        """Close the batch connections (the redis-py client is the caller's)."""
        await self.batches.aclose()

    def batch(self) -> resp.Batch:
        """Commands for one round trip, EVALSHA and plain commands read raw."""
        return resp.Batch(self.batches)

    async def unclaim(self, claims: list[tuple[str, str]], client: Any) -> None:
        """Give back waybill numbers and payment serials, as (claim key, order
        key), of orders that will not leave: only where that order still holds them."""
        for group in state.group_by_slot(claims, lambda ko: ko[0]).values():
            await self.scripts.unclaim(keys=[k for k, _o in group], args=[o for _k, o in group], client=client)

    def _ledger(self, q: decide.QuotaRequest | None) -> str:
        assert q is not None
        return state.ledger_key(q.buyer, q.year, self.buckets, q.ledger)

    @staticmethod
    def _case(p: _Pending) -> Case:
        completing = max(p.metas.values(), key=lambda mt: mt.get("at", 0), default={})
        return Case(p.docs, p.first_ms, int(completing.get("at", p.first_ms)),
                    int(completing.get("rts", p.first_ms)), metas=p.metas)

    # ------------------------------------------------------------------ emit

    async def _emit(self, pending: dict[str, _Pending], reemit: dict[str, _Emit],
                    out_receipts: list[dict[str, Any]], now: int) -> None:
        to_emit: list[_Emit] = []
        unreserve: list[decide.QuotaRequest] = []
        unclaim: list[tuple[str, str]] = []
        decided = [p for p in pending.values() if p.decision is not None]
        if decided:
            groups = state.group_by_slot(decided, lambda p: p.order_key)
            pipe = self.batch()
            raw: dict[str, bytes] = {p.order_key: orjson.dumps(p.decision) for p in decided}
            for group in groups.values():
                await self.scripts.store(keys=[p.order_key for p in group],
                                         args=[now] + [raw[p.order_key] for p in group], client=pipe)
            for group, replies in zip(groups.values(), await pipe.execute()):
                for p, reply in zip(group, replies):
                    assert p.decision is not None
                    if reply == 1:  # stored now; otherwise the decision stored before
                        # The stored bytes are the ones produced: serialised once.
                        to_emit.append(_Emit(p.order_key, p.decision, p.docs, p.metas, raw[p.order_key]))
                        if p.decision["status"] == REJECT:
                            unreserve.extend(p.reserved)  # a rejected list holds no quota
                            unclaim += ((k, p.order_key) for k in p.claims)  # nor numbers
                    elif orjson.loads(reply)["status"] == REJECT:
                        # Another worker decided first and its reject stands: give
                        # back the quota and numbers this batch took.
                        unreserve.extend(p.reserved)
                        unclaim += ((k, p.order_key) for k in p.claims)
        to_emit.extend(reemit.values())
        # Until they are confirmed, a later batch of this worker that meets
        # these orders again leaves them to this one.
        mine = {e.order_key for e in to_emit} - self.emitting
        self.emitting |= mine
        try:
            await self._send(to_emit, unreserve, unclaim, out_receipts, now)
        finally:
            self.emitting -= mine

    async def _send(self, to_emit: list[_Emit], unreserve: list[decide.QuotaRequest],
                    unclaim: list[tuple[str, str]], out_receipts: list[dict[str, Any]], now: int) -> None:
        """Produce the decisions, release events and receipts, flush, then
        confirm the decisions and give back what rejected orders held."""
        after_pipe = self.batch()
        for call in self.after.on_emitted([e.decision for e in to_emit], after_pipe, now):
            await call
        for e in to_emit:
            self.sink.produce(self.t_decisions, e.decision["decisionId"], e.raw or orjson.dumps(e.decision))
            event = decide.release_event(e.decision)
            if event is not None:
                self.sink.produce(self.t_release, event.get("logisticsNo") or e.decision["orderNo"],
                                  orjson.dumps(event))
            out_receipts.extend(receipts.decision_receipts(e.decision, e.docs, e.metas, now))
        receipt_counts = Counter((r["type"], r["body"]["returnStatus"]) for r in out_receipts)
        for key, value in ceb.encode_receipts(out_receipts, self.settings.dxp_id):
            self.sink.produce(self.t_receipts, key, value)
        await self.sink.flush()
        if len(after_pipe):
            await after_pipe.execute()

        if to_emit or unreserve or unclaim:
            pipe = self.batch()
            for tag, group in state.group_by_slot(to_emit, lambda e: e.order_key).items():
                keys = [state.NS + ":p:" + tag]
                for e in group:
                    keys += (e.order_key, state.decided_waybill_key(e.decision, self.buckets))
                await self.scripts.confirm(keys=keys, args=[self.settings.decided_ttl_s], client=pipe)
            for group in state.group_by_slot(unreserve, self._ledger).values():
                await self.scripts.unreserve(keys=[self._ledger(q) for q in group], args=[q.order for q in group],
                                             client=pipe)
            await self.unclaim(unclaim, pipe)
            await pipe.execute()
        self._observe(to_emit, receipt_counts)

    @staticmethod
    def _observe(emitted: list[_Emit], receipt_counts: Counter[tuple[str, str]]) -> None:
        # Counted per batch, then one increment per label set (a labelled child
        # lookup takes a lock: per decision it was a few µs per order).
        for (rtype, status), n in receipt_counts.items():
            m.RECEIPTS.labels(rtype, status).inc(n)
        done = int(time.time() * 1000)
        outcomes: Counter[tuple[str, str, str]] = Counter()
        hits: Counter[str] = Counter()
        missing: Counter[str] = Counter()
        unclaimed = 0
        for e in emitted:
            d = e.decision
            outcomes[(str(d["status"]), d["outcome"], d["lane"])] += 1
            hits.update(d["rules"])
            if state.is_waybill_key(e.order_key):  # a waybill alone, not an order's match
                unclaimed += 1
            else:
                missing.update(d.get("missing", ()))
            rts = d["timestamps"].get("completingRecord")
            if rts:
                m.LATENCY.observe(max(0, done - rts) / 1000)
        for labels, n in outcomes.items():
            m.DECISIONS.labels(*labels).inc(n)
        for rule, n in hits.items():
            m.RULE_HITS.labels(rule).inc(n)
        for t, n in missing.items():
            m.TIMEOUTS.labels(t).inc(n)
        if unclaimed:
            m.UNCLAIMED_WAYBILLS.inc(unclaimed)

    # ------------------------------------------------------------------ reviews

    async def review(self, records: list[InRecord]) -> None:
        """Officers' results for orders in manual review (300) or inspection (500):
        the final decision, its release event and 622 receipt, once per order."""
        now = int(time.time() * 1000)
        results = []
        for rec in records:
            try:
                r = orjson.loads(rec.value or b"")
                if not isinstance(r, dict) or r.get("result") not in ("release", "reject") or \
                        not isinstance(r.get("orderNo"), str) or not isinstance(r.get("ebpCode"), str):
                    raise ValueError("expected {ebpCode, orderNo, result: release|reject, officer, note}")
                results.append((state.order_key(r["ebpCode"], r["orderNo"], self.buckets), r))
            except ValueError as exc:
                self._reject(rec, "-2", "review_invalid", f"review result not understood: {exc}", "Review",
                             now, [])
        if not results:
            await self.sink.flush()
            return
        groups = state.group_by_slot(results, lambda kr: kr[0])
        pipe = self.batch()
        for group in groups.values():
            await self.scripts.review(keys=[k for k, _ in group], client=pipe)
        finals: list[tuple[str, dict[str, Any]]] = []
        for group, replies in zip(groups.values(), await pipe.execute()):
            for (key, r), reply in zip(group, replies):
                status = reply[0].decode()
                if status != "P":
                    m.REVIEWS.labels("unknown_order" if status == "N" else "already_final").inc()
                    continue
                decision = orjson.loads(reply[1])
                if decision["status"] not in (REVIEW, 500):
                    m.REVIEWS.labels("not_pending").inc()
                    continue
                finals.append((key, decide.review_decision(decision, r["result"], str(r.get("officer", "")),
                                                           str(r.get("note", "")), now)))
        if not finals:
            await self.sink.flush()
            return
        await self.after.charge([f for _, f in finals], now)
        pipe = self.batch()
        fgroups = state.group_by_slot(finals, lambda kf: kf[0])
        raw = {key: orjson.dumps(final) for key, final in finals}  # stored and produced: serialised once
        for group in fgroups.values():
            keys = [x for k, final in group for x in (k, state.decided_waybill_key(final, self.buckets))]
            await self.scripts.finalize(keys=keys, args=[self.settings.decided_ttl_s] + [raw[k] for k, _ in group],
                                        client=pipe)
        out_receipts = []
        unreserve: list[decide.QuotaRequest] = []
        unclaim: list[tuple[str, str]] = []
        after_pipe = self.batch()
        for group, replies in zip(fgroups.values(), await pipe.execute()):
            for (key, final), reply in zip(group, replies):
                if int(reply[0]) != 1:
                    continue
                m.REVIEWS.labels(final["review"]["result"]).inc()
                for call in self.after.on_emitted([final], after_pipe, now):
                    await call
                self.sink.produce(self.t_decisions, final["decisionId"], raw[key])
                event = decide.release_event(final)
                if event is not None:
                    self.sink.produce(self.t_release, event.get("logisticsNo") or final["orderNo"],
                                      orjson.dumps(event))
                elif final["status"] == REJECT:  # the officer's reject: quota and numbers go back
                    if final.get("quota"):
                        q = final["quota"]
                        unreserve += [decide.QuotaRequest(final["buyer"], q["year"], key, 0, 0, ledger=led)
                                      for led in q.get("ledgers", [""])]
                    unclaim += ((k, key) for k in final.get("claims", ()))
                out_receipts.append(receipts.final_inventory_receipt(final, now))
                m.DECISIONS.labels(str(final["status"]), final["outcome"], final["lane"]).inc()
        for key, value in ceb.encode_receipts(out_receipts, self.settings.dxp_id):
            self.sink.produce(self.t_receipts, key, value)
        await self.sink.flush()
        if len(after_pipe):
            await after_pipe.execute()
        if unreserve or unclaim:
            pipe = self.batch()
            for group in state.group_by_slot(unreserve, self._ledger).values():
                await self.scripts.unreserve(keys=[self._ledger(q) for q in group], args=[q.order for q in group],
                                             client=pipe)
            await self.unclaim(unclaim, pipe)
            await pipe.execute()

    # ------------------------------------------------------------------ timeouts

    async def sweep_timeouts(self, limit: int = 500, watermark_ms: int | None = None) -> int:
        """Decide incomplete matches older than the timeout; re-emit unconfirmed ones.

        The timeout runs on the group's watermark, not the wall clock: an order
        times out only when every inbound partition has been read past its first
        document's arrival + the timeout. Under a backlog (an outage, a slow
        topic) its missing documents may still be unread, and a wall-clock
        timeout would reject complete orders. `watermark_ms` is this worker's
        (app.local_watermark); the group's is the minimum of the live workers'.
        """
        now = int(time.time() * 1000)
        horizon = await self._horizon(now, now if watermark_ms is None else min(now, watermark_ms))
        if self.halted:  # a timeout is a decision too
            return 0
        keys = state.pending_keys(self.buckets)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.zrangebyscore(key, 0, horizon - self.timeout_ms, start=0, num=limit)
            pipe.zcard(key)
            pipe.zrange(key, 0, 0, withscores=True)
        replies = await pipe.execute()
        due: dict[str, list[str]] = {}
        total, oldest = 0, now
        for i, key in enumerate(keys):
            found, card, first = replies[3 * i], replies[3 * i + 1], replies[3 * i + 2]
            total += int(card)
            if first:
                oldest = min(oldest, int(first[0][1]))
            if found:
                due[key] = [k.decode() for k in found]
        m.PENDING.set(total)
        m.OLDEST_PENDING.set((now - oldest) / 1000)
        if not due:
            return 0
        pipe = self.batch()
        for pkey, okeys in due.items():
            await self.scripts.timeout(keys=[pkey] + okeys, args=[now, self.timeout_ms, SWEEP_STALE_MS, horizon],
                                       client=pipe)
        pending: dict[str, _Pending] = {}
        reemit: dict[str, _Emit] = {}
        for okeys, replies in zip(due.values(), await pipe.execute()):
            for okey, reply in zip(okeys, replies):
                status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
                if status == "R" and okey not in self.emitting:
                    _, raw_docs, raw_metas = state.split_docs(reply[2:])
                    reemit[okey] = _Emit(okey, orjson.loads(reply[1]), _loads_all(raw_docs), _loads_all(raw_metas),
                                         reply[1])
                elif status == "T":
                    first, raw_docs, raw_metas = state.split_docs(reply[1:])
                    # All four present but undecided means a worker died between
                    # match and decision: decide it as a complete match.
                    pending[okey] = _Pending(okey, _loads_all(raw_docs), _loads_all(raw_metas), first,
                                             complete=len(raw_docs) == len(DOC_TYPES))
        await self._decide(pending, now)
        await self._emit(pending, reemit, [], now)
        return len(pending) + len(reemit)

    async def leave(self) -> None:
        await self.redis.hdel(self.watermark_key, self.worker_id)

    async def open_keyspace(self, consumed_before: bool | None) -> None:
        """At the worker's start: is the namespace empty although the worker
        group had consumed before (`consumed_before`, its committed offsets;
        None: unknown)? Then Redis was emptied while no worker ran. The
        deployments hash tells an upgrade from before the markers: it is read
        before this worker writes its own entry."""
        now = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(state.deployments_key())
        pipe.hset(state.deployments_key(), self.deployment, now)
        self._ask_keyspace(pipe)
        marker, _, *replies = await pipe.execute()
        await self._answer_keyspace(replies, bool(consumed_before) and not marker, now)

    def _ask_keyspace(self, pipe: Any) -> None:
        """The halt key and the keyspace's markers, onto `pipe` (last)."""
        pipe.get(state.halt_key())
        for key in state.epoch_keys(self.buckets):
            pipe.get(key)

    async def _answer_keyspace(self, replies: list[Any], expected: bool, now: int) -> None:
        """_ask_keyspace's replies: markers checked, the halt taken or lifted."""
        halted, *found = replies
        lost_halt = await self._check_keyspace(dict(zip(state.epoch_keys(self.buckets), found)), expected, now)
        self._set_halted(lost_halt or halted)

    async def _check_keyspace(self, found: dict[str, bytes | None], expected: bool, now: int) -> str | None:
        """Tell when Redis has lost data: a marker of the keyspace (state.epoch_keys)
        is missing that this worker saw, or that a populated namespace
        (`expected`) would hold. Its pending matches, buyers' annual quotas,
        held numbers and counters are gone with it, and nothing else would say
        so: orders go on being decided as if new. Logged and counted (alert
        ClearanceRedisKeyspaceLost); the missing markers are written again.
        Under CLEARANCE_REDIS_LOSS=halt the halt key is set too, and returned."""
        missing = [k for k, v in found.items() if v is None]
        if not missing:
            if self.epoch is None:
                self.epoch = state.as_text(next(iter(found.values())))
            return None
        present = [v for v in found.values() if v is not None]
        if self.epoch is not None:
            lost = f"{len(missing)} of {len(found)} slot buckets' markers disappeared"
        elif present:
            lost = f"{len(missing)} of {len(found)} slot buckets' markers are missing"
        elif expected:
            lost = "the namespace is empty, but this worker group has consumed before"
        else:
            lost = ""  # a new deployment, or one upgraded from before the markers
        if self.epoch is None:
            self.epoch = state.as_text(present[0]) if present else f"{now}:{self.worker_id}"
        halt = None
        pipe = self.redis.pipeline(transaction=False)
        if lost:
            m.KEYSPACE_LOST.inc()
            going_on = "every worker stops deciding until `clearance resume`" if self.settings.redis_loss == "halt" \
                else "orders go on being decided without them"
            log.critical("Redis lost data of namespace %r: %s. Pending matches, buyers' annual quotas, held "
                         "waybill numbers and counters there are gone; %s (docs/operations.md, "
                         "ClearanceRedisKeyspaceLost)", state.NS, lost, going_on)
            if self.settings.redis_loss == "halt":
                halt = f"{decide.cst_stamp(now, 14)} {self.worker_id}: {lost}"
                pipe.set(state.halt_key(), halt, nx=True)
        for key in missing:
            pipe.set(key, self.epoch, nx=True)
        await pipe.execute()
        return halt

    def _set_halted(self, reason: bytes | str | None) -> None:
        text = None if reason is None else state.as_text(reason)
        if text and not self.halted:
            log.critical("halted: deciding nothing, documents held unacknowledged, until `clearance resume` "
                         "(%s)", text)
        elif self.halted and not text:
            log.warning("resumed: the halt was lifted (%s)", self.halted)
        self.halted = text
        m.HALTED.set(1 if text else 0)

    def _count_deployments(self, seen: dict[bytes, bytes], now: int) -> list[bytes]:
        """Deployments (topic prefixes) whose workers used this Redis namespace
        in the last DEPLOYMENT_TTL_MS. Two deployments in one namespace match
        each other's orders, share buyers' quotas and decide each other's
        timeouts on their own topics: each needs its own
        CLEARANCE_REDIS_NAMESPACE. Said at once, and on /metrics (alert
        ClearanceRedisShared). Returns the entries of deployments gone quiet,
        to forget."""
        live = sorted(k.decode() for k, at in seen.items() if now - int(at or 0) <= DEPLOYMENT_TTL_MS)
        m.REDIS_DEPLOYMENTS.set(len(live))
        others = [p or "(no prefix)" for p in live if p != self.deployment]
        if others and others != self.warned_deployments:
            log.error("another deployment uses this Redis namespace %r (CLEARANCE_TOPIC_PREFIX %s): their orders "
                      "and timeouts mix with this one's; give each its own CLEARANCE_REDIS_NAMESPACE "
                      "(docs/operations.md)", state.NS, ", ".join(others))
        self.warned_deployments = others
        return [k for k, at in seen.items() if now - int(at or 0) > DEPLOYMENT_TTL_MS]

    async def _horizon(self, now: int, local: int) -> int:
        """The group's watermark: the minimum of the watermarks live workers reported
        (each sweep reports this worker's; a worker silent for WATERMARK_TTL_MS is gone)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.watermark_key, self.worker_id, f"{local}:{now}")
        pipe.hgetall(self.watermark_key)
        pipe.hset(state.deployments_key(), self.deployment, now)
        pipe.hgetall(state.deployments_key())
        self._ask_keyspace(pipe)
        _, entries, _, deployments, *replies = await pipe.execute()
        await self._answer_keyspace(replies, False, now)
        stale = self._count_deployments(deployments, now)
        if stale:
            await self.redis.hdel(state.deployments_key(), *stale)
        marks, gone = [], []
        for worker, value in entries.items():
            mark, _, at = value.partition(b":")
            if now - int(at or 0) > WATERMARK_TTL_MS:
                gone.append(worker)
            else:
                marks.append(int(mark))
        if gone:
            await self.redis.hdel(self.watermark_key, *gone)
        self.horizon_ms = min(marks, default=local)
        m.TIMEOUT_HOLD.set(max(0, now - self.horizon_ms) / 1000)
        return self.horizon_ms
