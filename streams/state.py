"""Match state and cross-order state in Redis, behind atomic Lua scripts.

Every key carries a hash tag ({orderNo}, {buyer}, {bucket}) and every script
touches one key, so the same code runs on Redis Cluster. A batch of documents
is one pipeline of script calls: one network round trip.

Order key  clr:o:{orderNo}   hash  d<type> canonical document, m<type> arrival meta,
                                   first (ms), dec (decision JSON), dect, emit
Ledger     clr:q:{buyer}:<year> hash  o:<orderKey> -> cents reserved, total
Pending    clr:p:{<bucket>}   zset orderKey -> first arrival ms (for timeouts)
Serial     clr:seq:{<customsCode>}:<year>  counter for invtNo/preNo
"""
from __future__ import annotations

import zlib
from typing import Any

PENDING_BUCKETS = 16
LEDGER_TTL_S = 400 * 24 * 3600

_ALL = "redis.call('HMGET', k, 'first', 'd311', 'm311', 'd411', 'm411', 'd511', 'm511', 'd621', 'm621')"

# Returns {'A'} new, {'S'} identical duplicate, {'C'} conflicting duplicate,
# {'D', dec} already decided, {'M', first, docs...} complete (also when an
# identical duplicate finds all four present and no decision yet, which is
# how a crash between match and decision recovers), {'R', dec, first, docs...}
# decided but never confirmed emitted (re-emit after `stale` ms).
MATCH = f"""
local k = KEYS[1]
local t, payload, meta = ARGV[1], ARGV[2], ARGV[3]
local now, stale = tonumber(ARGV[4]), tonumber(ARGV[5])
local dec = redis.call('HGET', k, 'dec')
if dec then
  if redis.call('HEXISTS', k, 'emit') == 0 and now - tonumber(redis.call('HGET', k, 'dect') or '0') > stale then
    redis.call('HSET', k, 'dect', now)
    local r = {_ALL}
    table.insert(r, 1, dec)
    table.insert(r, 1, 'R')
    return r
  end
  return {{'D', dec}}
end
local cur = redis.call('HGET', k, 'h' .. t)
local digest = redis.sha1hex(payload)
local status = 'A'
if cur then
  if cur ~= digest then return {{'C'}} end
  status = 'S'
else
  redis.call('HSET', k, 'd' .. t, payload, 'm' .. t, meta, 'h' .. t, digest)
  redis.call('HSETNX', k, 'first', now)
end
if redis.call('HEXISTS', k, 'd311') == 1 and redis.call('HEXISTS', k, 'd411') == 1
   and redis.call('HEXISTS', k, 'd511') == 1 and redis.call('HEXISTS', k, 'd621') == 1 then
  local r = {_ALL}
  table.insert(r, 1, 'M')
  return r
end
return {{status}}
"""

# {'W'} not yet due, {'X'} nothing to do (drop from pending), {'T', first, docs...}
# due, {'R', dec, first, docs...} decided but unconfirmed: re-emit.
TIMEOUT = f"""
local k = KEYS[1]
local now, timeout, stale = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local dec = redis.call('HGET', k, 'dec')
if dec then
  if redis.call('HEXISTS', k, 'emit') == 0 and now - tonumber(redis.call('HGET', k, 'dect') or '0') > stale then
    redis.call('HSET', k, 'dect', now)
    local r = {_ALL}
    table.insert(r, 1, dec)
    table.insert(r, 1, 'R')
    return r
  end
  if redis.call('HEXISTS', k, 'emit') == 1 then return {{'X'}} end
  return {{'W'}}
end
local first = redis.call('HGET', k, 'first')
if not first then return {{'X'}} end
if now - tonumber(first) < timeout then return {{'W'}} end
local r = {_ALL}
table.insert(r, 1, 'T')
return r
"""

# First decision stored wins: {1} stored now, {0, existing} someone else decided.
STORE = """
local k = KEYS[1]
local existing = redis.call('HGET', k, 'dec')
if existing then return {0, existing} end
redis.call('HSET', k, 'dec', ARGV[1], 'dect', ARGV[2])
return {1}
"""

# Emission confirmed: keep the arrival metadata and digests (duplicates and
# trace), drop the document bodies, let the key expire.
CONFIRM = """
local k = KEYS[1]
redis.call('HSET', k, 'emit', 1)
redis.call('HDEL', k, 'd311', 'd411', 'd511', 'd621')
redis.call('EXPIRE', k, tonumber(ARGV[1]))
return 1
"""

# Reserve an order's dutiable price against a buyer's annual limit, once per
# order: {1, used_before} reserved (or already reserved), {0, used} over limit.
RESERVE = """
local k = KEYS[1]
local field = 'o:' .. ARGV[1]
local amount, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local total = tonumber(redis.call('HGET', k, 'total') or '0')
local cur = redis.call('HGET', k, field)
if cur then return {1, total - tonumber(cur)} end
if total + amount > limit then return {0, total} end
redis.call('HSET', k, field, amount)
redis.call('HINCRBY', k, 'total', amount)
redis.call('EXPIRE', k, tonumber(ARGV[4]))
return {1, total}
"""

# Give an order's reservation back (cancel, return, or a lost decision race).
UNRESERVE = """
local k = KEYS[1]
local field = 'o:' .. ARGV[1]
local cur = redis.call('HGET', k, field)
if not cur then return 0 end
redis.call('HDEL', k, field)
redis.call('HINCRBY', k, 'total', -tonumber(cur))
return 1
"""


def order_key(order_no: str) -> str:
    return "clr:o:{" + order_no + "}"


def pending_key(order_no: str) -> str:
    return "clr:p:{b%02d}" % (zlib.crc32(order_no.encode()) % PENDING_BUCKETS)


def pending_keys() -> list[str]:
    return ["clr:p:{b%02d}" % b for b in range(PENDING_BUCKETS)]


def ledger_key(buyer: str, year: str) -> str:
    return "clr:q:{" + buyer + "}:" + year


def serial_key(customs_code: str, year: str) -> str:
    return "clr:seq:{" + customs_code + "}:" + year


class Scripts:
    """The registered scripts of one Redis client (EVALSHA, loaded on demand)."""

    def __init__(self, redis: Any):
        self.match = redis.register_script(MATCH)
        self.timeout = redis.register_script(TIMEOUT)
        self.store = redis.register_script(STORE)
        self.confirm = redis.register_script(CONFIRM)
        self.reserve = redis.register_script(RESERVE)
        self.unreserve = redis.register_script(UNRESERVE)


def split_docs(values: list[Any]) -> tuple[int, dict[str, bytes], dict[str, bytes]]:
    """Unpack the HMGET tail [first, d311, m311, ...] of a script reply."""
    first = int(values[0] or 0)
    docs: dict[str, bytes] = {}
    metas: dict[str, bytes] = {}
    for i, t in enumerate(("311", "411", "511", "621")):
        d, m = values[1 + 2 * i], values[2 + 2 * i]
        if d is not None:
            docs[t] = d
        if m is not None:
            metas[t] = m
    return first, docs, metas
