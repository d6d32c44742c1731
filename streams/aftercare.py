"""After the decision, in the worker: the guarantee check before release, tax
records, cancels (CEB623) and returns (CEB625), and guarantee top-ups.

Each effect is idempotent: a parcel's state changes once (Lua on its key), a
quota refund and a guarantee restore are recorded per return id, a tax record
is aggregated once per record id.
"""
from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from processors import aftercare, decide, features, receipts
from processors.rules import RELEASE
from streams import metrics as m
from streams import state

if TYPE_CHECKING:
    from streams.pipeline import Pipeline


class Aftercare:
    def __init__(self, pipeline: "Pipeline"):
        self.p = pipeline
        self.redis = pipeline.redis
        self.s = state.AfterScripts(pipeline.redis)
        from topics import registry

        self.t_tax = registry.topic_name(registry.TAX, pipeline.settings)

    # ------------------------------------------------------------ guarantee and tax on release

    async def charge(self, decisions: list[dict[str, Any]], now: int) -> None:
        """Charge each releasing list's tax to its guarantor; hold (599) what does not fit."""
        releasing = [d for d in decisions if d["status"] == RELEASE and d.get("tax") and d.get("assureCode")]
        if not releasing:
            return
        # One script call per guarantor for the whole batch, lists in batch order.
        by_guarantor: dict[str, list[dict[str, Any]]] = {}
        for d in releasing:
            by_guarantor.setdefault(d["assureCode"], []).append(d)
        pipe = self.p.batch()
        for assure, group in by_guarantor.items():
            args: list[Any] = [now]
            for d in group:
                args += (d["invtNo"], aftercare.cents(d["tax"]["taxTotal"]), d["orderKey"])
            await self.s.guarantee_use(keys=list(state.guarantee_keys(assure, self.p.buckets)), args=args,
                                       client=pipe)
        replies = await pipe.execute()
        results = [(d, r) for group, reply in zip(by_guarantor.values(), replies)
                   for d, r in zip(group, state.pairs(reply))]
        for d, (ok, remaining) in results:
            if int(ok):
                continue
            d.update({"status": aftercare.HELD, "outcome": "held", "final": False})
            d["reasons"] = list(d["reasons"]) + [{
                "rule": "guarantee.balance", "reason": "GUARANTEE_INSUFFICIENT", "status": aftercare.HELD,
                "lane": d["lane"], "info": f"guarantor {d['assureCode']}: tax {d['tax']['taxTotal']} exceeds the "
                                           f"remaining guarantee {Decimal(int(remaining)) / 100}; held until a top-up",
                "evidence": {"remaining": str(Decimal(int(remaining)) / 100), "tax": d["tax"]["taxTotal"]}}]
            d["rules"] = sorted(set(d["rules"]) | {"guarantee.balance"})
            m.ERRORS.labels("guarantee_insufficient").inc()
            m.GUARANTEE_HELD.labels(d["assureCode"]).inc()

    def on_emitted(self, decisions: list[dict[str, Any]], pipe: Any, now: int) -> list[Any]:
        """Produce the tax records of released lists; return the Redis calls to queue:
        one index call per slot bucket and one tax call per period for the whole batch,
        not a round of commands per order."""
        index: dict[str, list[tuple[str, str, str]]] = {}
        records = []
        buckets = self.p.buckets
        for decision in decisions:
            order_key = decision["orderKey"]
            for kind, value in (("ln", decision.get("logisticsNo")), ("inv", decision.get("invtNo"))):
                if value:
                    key = state.index_key(kind, value, buckets)
                    index.setdefault(state.slot_tag(key), []).append((key, "", order_key))
            # A waybill that timed out alone names no platform (its platform
            # is ""): trace finds it by its logisticsNo, not among an orderNo's orders.
            platform = state.platform_of(order_key)
            if platform:
                key = state.order_index_key(state.order_no_of(order_key), buckets)
                index.setdefault(state.slot_tag(key), []).append((key, platform, order_key))
            if decision["status"] == RELEASE and decision.get("tax"):
                record = aftercare.tax_record(decision, now)
                self.p.sink.produce(self.t_tax, decision["invtNo"], orjson.dumps(record))
                records.append(record)
        calls = [self.s.index(keys=[k for k, _, _ in group],
                              args=[self.p.settings.decided_ttl_s] + [x for _, f, o in group for x in (f, o)],
                              client=pipe)
                 for group in index.values()]
        by_period: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_period.setdefault(record["period"], []).append(record)
        calls.extend(self._aggregate(group, pipe) for group in by_period.values())
        return calls

    def _aggregate(self, records: list[dict[str, Any]], pipe: Any) -> Any:
        """Add tax records of one half-month period to its aggregate, each once."""
        args: list[Any] = [state.TAX_RECORD_TTL_S]
        for record in records:
            c = record["cents"]
            args += [record["recordId"], record["assureCode"] or "-", c["customsTax"], c["valueAddedTax"],
                     c["consumptionTax"], c["taxTotal"], -1 if record["kind"] == "reversal" else 1]
        period = records[0]["period"]
        return self.s.tax(keys=[state.tax_period_key(period), state.tax_records_key(period)], args=args,
                          client=pipe)

    # ------------------------------------------------------------ cancels and returns

    async def handle(self, docs: list[Any], now: int, out_receipts: list[dict[str, Any]]) -> None:
        if not docs:
            return
        pipe = self.p.batch()
        for d in docs:
            pipe.execute_command("HMGET", d.order_key, "dec", "final", "d621")
        looked = await pipe.execute()
        for d, (dec, final, inv) in zip(docs, looked):
            decision = orjson.loads(final or dec) if (final or dec) else None
            unverified = self._sender_unverified(d)
            if unverified:
                # R13 as for a list: no rule to send a cancel or a return to
                # review, so one from a node or card not its sender's is refused.
                m.REVIEWS.labels("cancel_refused" if d.doc["type"] == "623" else "return_refused").inc()
                out_receipts.append(receipts.document_receipt(
                    d.doc, d.meta, "100", f"R13 发送方身份不符 (the sender is not who its BaseTransfer names: "
                    f"{unverified})", now))
                continue
            if d.doc["type"] == "623":
                await self._cancel(d, decision, orjson.loads(inv) if inv else None, now, out_receipts)
            else:
                await self._return(d, decision, orjson.loads(inv) if inv else None, now, out_receipts)

    def _sender_unverified(self, d: Any) -> str:
        register = self.p.register()
        if not register or not d.meta:
            return ""
        return "; ".join(features.sender_unverified({d.doc["type"]: d.meta}, register))

    async def _cancel(self, d: Any, decision: dict[str, Any] | None, inventory: dict[str, Any] | None, now: int,
                      out_receipts: list[dict[str, Any]]) -> None:
        ok, why = aftercare.cancel_check(decision, d.doc["head"], inventory)
        if not ok or decision is None:
            m.REVIEWS.labels("cancel_refused").inc()
            out_receipts.append(receipts.document_receipt(d.doc, d.meta, "100", why, now))
            return
        reply = await self.s.cancel(keys=[state.parcel_key(decision["logisticsNo"], self.p.buckets)],
                                    args=[now, decision["orderNo"], self.p.settings.decided_ttl_s,
                                          decision.get("invtNo", "")])
        status = int(reply[0])
        if status < 0:
            out_receipts.append(receipts.document_receipt(
                d.doc, d.meta, "100", f"-623005 清单状态不允许撤销: the parcel has {reply[1].decode()} the zone"
                if reply[1] == b"exited" else f"-623005 清单状态不允许撤销 ({reply[1].decode()})", now))
            return
        if status >= 1:  # 2: and another list's parcel with this number may leave; see PARCEL_CANCEL
            cancelled = aftercare.cancel_decision(decision, str(d.doc["head"].get("reason", "")), now)
            sink = self.p.sink
            sink.produce(self.p.t_decisions, cancelled["decisionId"], orjson.dumps(cancelled))
            if decision["status"] == RELEASE:
                sink.produce(self.p.t_release, decision["logisticsNo"],
                             orjson.dumps(aftercare.revocation_event(decision, now)))
            pipe = self.p.batch()
            pipe.execute_command("HSET", d.order_key, "final", orjson.dumps(cancelled))
            for op, area in state.cancel_area_moves(reply, decision.get("areaCode", "")):
                pipe.execute_command(op, area, decision["logisticsNo"])
            for led in (decision.get("quota") or {}).get("ledgers", []):
                await self.p.scripts.unreserve(keys=[state.ledger_key(decision["buyer"], decision["quota"]["year"],
                                                                      self.p.buckets, led)],
                                               args=[decision["orderKey"]], client=pipe)
            # The parcel does not leave: its waybill number and payment serial are free (R9).
            await self.p.unclaim([(k, decision["orderKey"]) for k in decision.get("claims", ())], pipe)
            if decision["status"] == RELEASE and decision.get("tax"):
                record = aftercare.tax_record(decision, now, "reversal", Decimal(1), "cancel")
                sink.produce(self.t_tax, decision["invtNo"], orjson.dumps(record))
                await self._aggregate([record], pipe)
                g, _held = state.guarantee_keys(decision.get("assureCode", "-"), self.p.buckets)
                await self.s.guarantee_restore(keys=[g], args=[decision["invtNo"]], client=pipe)
            await pipe.execute()
            m.DECISIONS.labels("100", "cancelled", "reject").inc()
        out_receipts.append(receipts.document_receipt(d.doc, d.meta, "399", "撤销成功 (list cancelled; "
                                                      "release revoked, quota restored)", now))

    async def _return(self, d: Any, decision: dict[str, Any] | None, inventory: dict[str, Any] | None, now: int,
                      out_receipts: list[dict[str, Any]]) -> None:
        ok, why, value, fraction = aftercare.refund_check(decision, inventory, d.doc["head"], d.doc["lines"], now)
        if not ok or decision is None:
            out_receipts.append(receipts.document_receipt(d.doc, d.meta, "100", why, now))
            return
        reply = await self.s.ret(keys=[state.parcel_key(decision["logisticsNo"], self.p.buckets)],
                                 args=[now, self.p.settings.decided_ttl_s])
        status = int(reply[0])
        if status < 0:
            out_receipts.append(receipts.document_receipt(
                d.doc, d.meta, "100", f"-625005 退货需在出区后 (parcel state: {reply[1].decode()})", now))
            return
        if status == 1:
            guid = str(d.doc["head"].get("guid", ""))
            pipe = self.p.batch()
            quota = decision.get("quota") or {}
            if quota:
                await self.s.refund(keys=[state.ledger_key(decision["buyer"], quota["year"], self.p.buckets)],
                                    args=[decision["orderKey"], aftercare.cents(value), guid], client=pipe)
            if decision.get("tax"):
                record = aftercare.tax_record(decision, now, "reversal", fraction, guid)
                self.p.sink.produce(self.t_tax, decision["invtNo"], orjson.dumps(record))
                await self._aggregate([record], pipe)
                g, _held = state.guarantee_keys(decision.get("assureCode", "-"), self.p.buckets)
                await self.s.guarantee_refund(keys=[g], args=[guid, -record["cents"]["taxTotal"]], client=pipe)
            returned = {"at": now, "value": str(value), "lines": d.doc["lines"]}
            pipe.execute_command("HSET", d.order_key, "return:" + guid, orjson.dumps(returned))
            await pipe.execute()
        out_receipts.append(receipts.document_receipt(d.doc, d.meta, "399",
                                                      f"退货成功 (returned value {value}; quota and tax restored)", now))

    # ------------------------------------------------------------ guarantee top-ups

    async def topup(self, records: list[Any]) -> None:
        """Release the held lists of guarantors whose guarantee was topped up."""
        now = int(time.time() * 1000)
        assures = set()
        for rec in records:
            try:
                assures.add(str(orjson.loads(rec.value or b"")["assureCode"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
        out_receipts: list[dict[str, Any]] = []
        for assure in assures:
            g, held = state.guarantee_keys(assure, self.p.buckets)
            for okey in [k.decode() for k in await self.redis.zrange(held, 0, -1)]:
                raw = await self.redis.hmget(okey, "dec", "final")
                current = raw[1] or raw[0]
                decision = orjson.loads(current) if current else None
                if decision is None or decision["status"] != aftercare.HELD:
                    await self.redis.zrem(held, okey)
                    continue
                ok, _remaining = await self.s.guarantee_use(
                    keys=[g, held], args=[now, decision["invtNo"], aftercare.cents(decision["tax"]["taxTotal"]), okey])
                if not int(ok):
                    break  # in order: the oldest held list first
                final = dict(decision, status=RELEASE, outcome="release", final=True,
                             timestamps=dict(decision["timestamps"], guaranteed=now))
                final["reasons"] = [r for r in decision["reasons"] if r.get("rule") != "guarantee.balance"]
                final["rules"] = sorted({r["rule"] for r in final["reasons"]})
                if not int(await self.s.release_held(keys=[okey, state.decided_waybill_key(final, self.p.buckets)],
                                                     args=[orjson.dumps(final), self.p.settings.decided_ttl_s])):
                    continue
                self.p.sink.produce(self.p.t_decisions, final["decisionId"], orjson.dumps(final))
                event = decide.release_event(final)
                if event is not None:
                    self.p.sink.produce(self.p.t_release, event["logisticsNo"], orjson.dumps(event))
                pipe = self.p.batch()
                for call in self.on_emitted([final], pipe, now):
                    await call
                await pipe.execute()
                out_receipts.append(receipts.final_inventory_receipt(final, now))
                m.DECISIONS.labels("800", "release", final["lane"]).inc()
        from topics import ceb

        for key, value in ceb.encode_receipts(out_receipts, self.p.settings.dxp_id):
            self.p.sink.produce(self.p.t_receipts, key, value)
        await self.p.sink.flush()
