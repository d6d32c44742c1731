"""`clearance migrate-keys`: match state from before the (ebpCode, orderNo) key.

Up to the seventh session an order's hash was keyed by orderNo alone
(clr:o:{oNN}:<orderNo>) and held the waybill too. Workers of the eighth
session on key it by (ebpCode, orderNo) and keep a waybill that no list has
named under its own key (state.MATCH). Without this migration, a document of
an order matched under the old key would start a new match under the new one:
a pending order would be decided twice (each half timing out), and a replay of
a decided one would time out as a second decision.

Run it once with every worker stopped (old and new), then start the new
workers. It renames each old order hash to its new key (same slot bucket, so
RENAME works on a cluster), links it to its list's waybill key, moves a
waybill still waiting for its list to that key, and rewrites what refers to
order keys: the pending sets, the decision's orderKey, the trace index, the
annual-quota ledger fields and the guarantee's held lists. It is idempotent:
keys already in the new form are left alone. The windowed risk counters keep
old keys in their members; they only count, and age out within 30 days.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from processors import decide
from processors.documents import DOC_TYPES
from processors.rules import REJECT
from streams import state


def migrate_order_keys(r: Any, buckets: int = state.BUCKETS, dry_run: bool = False) -> Counter[str]:
    """Migrate every old-form order key; returns what it did, by kind."""
    done: Counter[str] = Counter()
    renamed: dict[str, str] = {}  # old order key -> new key
    for raw in list(r.scan_iter(match=state.NS + ":o:*", count=1000)):
        key = state.as_text(raw)
        parts = key.split(":", 3)
        if len(parts) < 4 or state.SEP in parts[3]:
            continue  # already keyed by (ebpCode, orderNo)
        new = _migrate_order(r, key, parts[3], buckets, dry_run, done)
        if new:
            renamed[key] = new
    if not renamed:
        return done
    _rewrite_references(r, renamed, dry_run, done)
    return done


def _migrate_order(r: Any, key: str, order_no: str, buckets: int, dry_run: bool,
                   done: Counter[str]) -> str | None:
    h = {state.as_text(f): v for f, v in r.hgetall(key).items()}
    docs = {t: orjson.loads(h["d" + t]) for t in DOC_TYPES if "d" + t in h}
    decision = orjson.loads(h["dec"]) if "dec" in h else None
    ebp = next((str(docs[t]["head"].get("ebpCode", "")) for t in ("311", "621", "411") if t in docs), "") \
        or (decision or {}).get("ebpCode", "")
    pending = state.pending_key(order_no, buckets)
    score = r.zscore(pending, key)
    if not ebp:
        # Only a waybill, never matched: it waits under its own key now.
        if "511" not in docs or decision is not None:
            done["left_without_platform"] += 1
            return None
        target = state.waybill_key_of(order_no, docs["511"]["head"], buckets)
        done["waybills"] += 1
        if not dry_run:
            _move(r, key, target, pending, score, done)
        return target
    new = state.order_key(ebp, order_no, buckets)
    done["orders"] += 1
    if dry_run:
        return new
    if not _move(r, key, new, pending, score, done):
        return None
    for field in ("dec", "final"):  # the stored decisions name their order key
        if field in h:
            d = orjson.loads(h[field])
            d["orderKey"] = new
            r.hset(new, field, orjson.dumps(d))
    listed = docs.get("621", {}).get("head") or decision or {}
    if listed.get("logisticsNo") is not None:
        w = state.waybill_key_of(order_no, listed, buckets)
        r.hset(new, "w", w)
        r.hsetnx(w, "owner", new)
        ttl = r.ttl(new)
        if ttl and ttl > 0:
            r.expire(w, ttl)
    elif "511" in docs and decision is None:
        # The waybill came before its list: it waits under its own key.
        w = state.waybill_key_of(order_no, docs["511"]["head"], buckets)
        first = h.get("first", b"0")
        r.hset(w, mapping={"d511": h["d511"], "m511": h.get("m511", b"{}"), "h511": h.get("h511", b""),
                           "first": first})
        r.hdel(new, "d511", "m511", "h511")
        r.zadd(pending, {w: int(first)}, nx=True)
        done["waybills_split"] += 1
    return new


def _move(r: Any, key: str, new: str, pending: str, score: Any, done: Counter[str]) -> bool:
    if not r.renamenx(key, new):  # the new key exists: a worker of the new version ran already
        done["conflicts"] += 1
        return False
    if score is not None:
        r.zrem(pending, key)
        r.zadd(pending, {new: score})
    return True


def _rewrite_references(r: Any, renamed: dict[str, str], dry_run: bool, done: Counter[str]) -> None:
    by_order_no = {old.split(":", 3)[3]: new for old, new in renamed.items() if not state.is_waybill_key(new)}
    # The trace index held orderNos; it holds order keys now.
    for raw in list(r.scan_iter(match=state.NS + ":idx:*", count=1000)):
        if state.as_text(raw).split(":", 4)[3] == "on":
            continue  # the orderNo index (a hash) came after this key change: it holds order keys already
        value = r.get(raw)
        new = by_order_no.get(state.as_text(value)) if value is not None else None
        if new:
            done["index_entries"] += 1
            if not dry_run:
                r.set(raw, new, keepttl=True)
    # Ledger fields o:<order key> (each order's reservation, given back on a cancel).
    for raw in list(r.scan_iter(match=state.NS + ":q:*", count=1000)):
        for field, value in r.hgetall(raw).items():
            name = state.as_text(field)
            old = name[2:] if name.startswith("o:") else None
            if old in renamed:
                done["ledger_fields"] += 1
                if not dry_run:
                    r.hset(raw, "o:" + renamed[old], value)
                    r.hdel(raw, field)
    # Lists held for a guarantee top-up, by order key.
    for raw in list(r.scan_iter(match=state.NS + ":g:*:held", count=1000)):
        for member, score in r.zrange(raw, 0, -1, withscores=True):
            if state.as_text(member) in renamed:
                done["held_lists"] += 1
                if not dry_run:
                    r.zrem(raw, member)
                    r.zadd(raw, {renamed[state.as_text(member)]: score})


def migrate_retention(r: Any, ttl_s: int, now_ms: int, dry_run: bool = False) -> Counter[str]:
    """`clearance migrate-retention`: state kept by versions before the
    twelfth session's retention (config/settings.py DEFAULT_DECIDED_TTL_S).
    Those kept a decided order 7 days from its decision, too short for the
    30-day return window, and a parcel's gate state forever. Decided orders
    (and the waybill keys that point to them) are kept `ttl_s` from their
    decision (`dect`) where that is longer than what they have left; exited,
    cancelled and returned parcels without an expiry get `ttl_s` from their
    last change (one already past it is deleted). Releasable parcels are kept
    until they leave, as new workers keep them. Idempotent, and safe while
    workers run: it only lengthens an order's life and sets expiries that
    new workers would set."""
    done: Counter[str] = Counter()
    for raw in list(r.scan_iter(match=state.NS + ":o:*", count=1000)):
        dect, w = r.hmget(raw, "dect", "w")
        left = r.ttl(raw)
        if dect is None or left < 0:  # undecided (no expiry until confirmed)
            continue
        target = int(state.as_text(dect)) // 1000 + ttl_s - now_ms // 1000
        if target <= left + 60:  # already kept as long (a minute for the clocks of the workers that set it)
            continue
        done["orders_kept_longer"] += 1
        if not dry_run:
            r.expire(raw, target)
            if w is not None and state.as_text(w) != state.as_text(raw):
                r.expire(w, target)
    for raw in list(r.scan_iter(match=state.NS + ":parcel:*", count=1000)):
        fields = {state.as_text(k): state.as_text(v) for k, v in r.hgetall(raw).items()}
        if fields.get("state", "releasable") == "releasable" or r.ttl(raw) != -1:
            continue
        changed = max(int(fields.get(name) or 0) for name in ("exitedAt", "cancelledAt", "returnedAt"))
        target = changed // 1000 + ttl_s - now_ms // 1000
        done["parcels_expired" if target <= 0 else "parcels_given_expiry"] += 1
        if not dry_run:
            if target <= 0:
                r.delete(raw)
            else:
                r.expire(raw, target)
    return done


def migrate_claims(r: Any, ttl_s: int, now_ms: int, buckets: int = state.BUCKETS, dry_run: bool = False,
                   kinds: tuple[str, ...] = ("waybill", "payment")) -> Counter[str]:
    """`clearance migrate-claims`: waybill numbers and payment serials of orders
    decided before the thirteenth session, which claimed none (R9,
    docs/matching.md). Each decided order still in Redis that may leave (not
    rejected, not cancelled) claims its waybill number, and its payment serial
    where its payment document is still kept (only until the decision is
    out), for what is left of `ttl_s` from its decision, and its stored
    decisions name the claims, so that a later cancel or officer's reject
    gives them back. Two old orders that
    shared a number: the one found first keeps it (counted as a conflict; the
    other stays as decided). Idempotent. Run it with every worker stopped, as
    `migrate-keys`: it rewrites stored decisions."""
    done: Counter[str] = Counter()
    for raw in list(r.scan_iter(match=state.NS + ":o:*", count=1000)):
        key = state.as_text(raw)
        dec, final, dect, d621, d411 = r.hmget(key, "dec", "final", "dect", "d621", "d411")
        if dec is None or d621 is None:
            continue  # undecided, or a timeout that never had its list
        stored = {field: orjson.loads(v) for field, v in (("dec", dec), ("final", final)) if v is not None}
        decision = stored.get("final") or stored["dec"]
        if decision["status"] == REJECT or "claims" in decision:
            continue
        left = int(state.as_text(dect or b"0")) // 1000 + ttl_s - now_ms // 1000
        if left <= 0:
            done["orders_past_the_retention"] += 1
            continue
        # The payment document is dropped once its order's decision is out
        # (state.CONFIRM): most old orders can claim only their waybill number.
        docs = {t: orjson.loads(v) for t, v in (("621", d621), ("411", d411)) if v is not None}
        claims = [state.claim_key(c.kind, c.issuer, c.number, buckets) for c in decide.claims_of(docs, kinds)]
        held = []
        for k in claims:
            holder = r.get(k)
            if holder is not None and state.as_text(holder) != key:
                done["conflicts"] += 1  # another order (found first, or decided since) holds it
                continue
            held.append(k)
            if not dry_run and holder is None:
                r.set(k, key, nx=True, ex=left)
        done["orders"] += 1
        done["claims"] += len(held)
        if held and not dry_run:
            for field, d in stored.items():
                d["claims"] = held
                r.hset(key, field, orjson.dumps(d))
    return done
