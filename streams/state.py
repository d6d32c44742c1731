"""Match state and cross-order state in Redis, behind atomic Lua scripts.

Keys are spread over a fixed number of slot buckets by a hash tag ({o07},
{q03}): every script call touches keys of one bucket only, so the scripts
run unchanged on Redis Cluster (a bucket is a hash slot; streams/resp.py
routes each call to its node), and a consumed batch
costs one script call per bucket instead of one per document. Buckets
(CLEARANCE_REDIS_BUCKETS, default 16) bound how many cluster shards share the
load; raise it before growing past that many shards.

Order key  clr:o:{oNN}:<ebpCode>␟<orderNo>   hash  d<type> canonical document, h<type> its sha1,
                                         m<type> arrival meta, first (ms), dec, dect, emit,
                                         w its list's waybill key
Waybill    clr:w:{oNN}:<orderNo>␟<logisticsCode>␟<logisticsNo>  hash  owner (the order key of
                                         the list that named it); d511/m511/h511, first while
                                         no list has named it
Pending    clr:p:{oNN}             zset  order or waybill key -> first arrival ms (timeouts)
(␟ stands for SEP, U+001F: see order_key. "clr" is the deployment's namespace,
CLEARANCE_REDIS_NAMESPACE: see use_namespace.)
Ledger     clr:q:{qNN}:<buyer>:<year> hash  o:<order key> -> cents reserved, total
Serial     clr:seq:{<customsCode>}:<year>  counter for invtNo/preNo
Features   clr:f:{fNN}:<family>:<entity>    zset  windowed counters for the risk rules
Claim      clr:u:{uNN}:<kind>:<issuer>␟<number>  string  the order key holding a waybill number
                                         or payment serial (R9), for CLEARANCE_UNIQUE_TTL_S
Epoch      clr:epoch:{oNN}, clr:epoch:{qNN}  string  markers that never expire: one gone means
                                         Redis lost data (epoch_keys)
"""
from __future__ import annotations

import hashlib
import zlib
from typing import Any, Callable, Iterable, Sequence, TypeVar

import hiredis
from redis import exceptions as rx
from redis.exceptions import NoScriptError

from config.settings import DEFAULT_REDIS_NAMESPACE, REDIS_NAMESPACE, host_ports
from streams import resp

LEDGER_TTL_S = 400 * 24 * 3600
DOC_FIELDS = "'first', 'd311', 'm311', 'd411', 'm411', 'd511', 'm511', 'd621', 'm621'"
# Calls with one argument per document or list (HMGET, HSET, ZADD, ZREM), in
# chunks: a script then pays one call per batch, not one per item, and Lua's
# unpack() stays within its stack for batches of any size. A call's fixed cost
# inside Redis is several thousand instructions (benchmarks.instructions).
MULTI = """
local function append(out, list)
  for j = 1, #list do out[#out + 1] = list[j] end
end

local function multi(cmd, key, list, flag)
  local out = {}
  for i = 1, #list, 1000 do
    local r
    if flag then
      r = redis.call(cmd, key, flag, unpack(list, i, math.min(i + 999, #list)))
    else
      r = redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
    end
    if type(r) == 'table' then append(out, r) end
  end
  return out
end
"""

# Claim the re-emission of a stored but unconfirmed decision: {dec, first,
# docs...}. Shared by MATCH and TIMEOUT, which put their own tags in front.
REEMIT = f"""
local function reemit(k, dec, now)
  redis.call('HSET', k, 'dect', now)
  local r = redis.call('HMGET', k, {DOC_FIELDS})
  table.insert(r, 1, dec)
  return r
end
"""

# KEYS: the pending set, then two keys per document: its own key and a second
# one. The order (311), payment (411) and list (621) belong to the order key
# of their (ebpCode, orderNo); the waybill (511) carries no ebpCode, so it is
# kept under its own waybill key, of (orderNo, logisticsCode, logisticsNo),
# until the list that names it arrives. The second key is the list's waybill
# key for a 621 and the document's own key again for the others. Both are in
# the slot bucket of orderNo, so one call stays in one hash slot.
#
# The join: a 621 writes its order key as the waybill key's 'owner' (the first
# list to name a waybill owns it; a list of another order that names it later
# is refused, 'O') and notes the waybill key in the order
# ('w'); a waybill found waiting there moves into the order. A 511 whose
# waybill key has an owner goes to that order; one without waits under its own
# key, in the pending set like an order, and times out alone if no list ever
# names it. A change (appType 2) of the list that names another waybill, or
# its delete, gives the waybill back to its own key, where it waits again.
#
# ARGV: now, stale, then per document its type, body, arrival metadata, the
# body's SHA-1 (hex; computed by the worker, whose SHA-1 is several times
# cheaper than the script's and does not take Redis's one thread) and appType.
# Per document, one flat reply for the whole call (match_replies() splits it):
# 'A' new, 'S' identical duplicate, 'C' conflicting duplicate, 'O' a list
# naming a waybill another order's list named first (refused), 'D', dec
# already decided, 'M', key, first, docs... complete (also when an identical
# duplicate finds all four present and no decision yet: how a crash between
# match and decision recovers), 'R', key, dec, first, docs... decided but
# never confirmed emitted (re-emit after `stale` ms). The key is the order's:
# for a waybill, not the key the caller sent. Flat because a table per item
# costs Redis more than most commands (benchmarks.instructions, "calls").
# In an 'M' reply a document that this same call stored comes back as its
# position in the call (1 = the first document) and its metadata as nil: the
# caller sent both. The four documents of an order mostly arrive in one
# batch, so most completions read nothing back (the reply had been ~4 kB per
# order, copied by Redis and parsed again by the worker).
# appType 2 (change) replaces a stored document of its type instead of
# conflicting with it, 3 (delete) removes it: 'X' deleted, 'N' nothing to
# delete. Both only before the decision; after it they get 'D' like any late
# document, and 'L' once the order was complete earlier in the same call (the
# batch decides it as it was then).
MATCH = MULTI + REEMIT + """
local pending = KEYS[1]
local now, stale = tonumber(ARGV[1]), tonumber(ARGV[2])
local waiting, listed, gone = {}, {}, {}  -- key -> first arrival; keys in order; keys that left pending
local types = {'311', '411', '511', '621'}
local mine = {}  -- key .. type -> position in this call of the document it stored
local complete = {}  -- keys this call found complete: they are being decided
local out = {}

local function wait(k, first)
  if not listed[k] then listed[#listed + 1], listed[k] = k, true end
  waiting[k], gone[k] = first, nil
end

local function leave(k)
  waiting[k], gone[k] = nil, true
end

-- Order k's list names waybill key w, which no other list owns (wb: w's
-- owner, dec, d511, m511, h511): k becomes its owner, and a waybill waiting
-- there moves into k (its fields are added to `set`, which the caller writes
-- to k with its own document).
local function claim(k, w, seen, set, wb)
  if wb[1] and wb[1] ~= k then return end
  if wb[2] or seen[5] or not wb[3] then
    if not wb[1] then redis.call('HSET', w, 'owner', k) end
    return
  end
  append(set, {'d511', wb[3], 'm511', wb[4], 'h511', wb[5]})
  redis.call('HDEL', w, 'd511', 'm511', 'h511', 'first')
  if not wb[1] then redis.call('HSET', w, 'owner', k) end
  seen[5] = wb[5]
  mine[k .. '511'], mine[w .. '511'] = mine[w .. '511'], nil
  leave(w)
end

-- Another order's list owns waybill key w? (Its fields are kept for claim():
-- every list that joins a waybill key reads it here first.)
local wbs = {}
local function taken(k, w)
  local wb = redis.call('HMGET', w, 'owner', 'dec', 'd511', 'm511', 'h511')
  wbs[w] = wb
  return wb[1] and wb[1] ~= k
end

-- The list of order k no longer names waybill key w: the waybill goes back
-- there to wait for a list that names it.
local function release(k, w, seen)
  if redis.call('HGET', w, 'owner') == k then redis.call('HDEL', w, 'owner') end
  redis.call('HDEL', k, 'w')
  if not seen[5] then return end
  local wb = redis.call('HMGET', k, 'd511', 'm511', 'h511')
  redis.call('HDEL', k, 'd511', 'm511', 'h511')
  redis.call('HSET', w, 'd511', wb[1], 'm511', wb[2], 'h511', wb[3], 'first', now)
  seen[5] = false
  mine[w .. '511'], mine[k .. '511'] = mine[k .. '511'], nil
  wait(w, now)
end

for i = 1, (#KEYS - 1) / 2 do
  local k, aux = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 5 * i - 2
  local t, payload, meta, digest, app = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  -- One read answers everything: decided?, first arrival, and which of the four
  -- documents are present (their digests), so completeness needs no second call.
  -- A waybill's key may name the order that owns it: then that order is read.
  local seen
  if t == '511' then
    seen = redis.call('HMGET', k, 'dec', 'first', 'h311', 'h411', 'h511', 'h621', 'w', 'owner')
    if seen[8] then
      k = seen[8]
      seen = redis.call('HMGET', k, 'dec', 'first', 'h311', 'h411', 'h511', 'h621', 'w')
    end
  else
    seen = redis.call('HMGET', k, 'dec', 'first', 'h311', 'h411', 'h511', 'h621', 'w')
  end
  local dec, first = seen[1], seen[2]
  local at = t == '311' and 3 or t == '411' and 4 or t == '511' and 5 or 6
  local cur = seen[at]
  if dec then
    if redis.call('HEXISTS', k, 'emit') == 0 and now - tonumber(redis.call('HGET', k, 'dect') or '0') > stale then
      out[#out + 1] = 'R'
      out[#out + 1] = k
      append(out, reemit(k, dec, now))
    else
      out[#out + 1] = 'D'
      out[#out + 1] = dec
    end
  elseif complete[k] and (app == '2' or app == '3') then
    out[#out + 1] = 'L'  -- too late: the batch decides the order as it was when complete
  elseif app == '3' then
    -- A delete before the decision: the document goes; an order left with
    -- none is forgotten (no timeout decision for what its sender withdrew).
    if cur then
      redis.call('HDEL', k, 'd' .. t, 'm' .. t, 'h' .. t)
      mine[k .. t] = nil
      seen[at] = false
      if t == '621' and seen[7] then release(k, seen[7], seen) end
      if not (seen[3] or seen[4] or seen[5] or seen[6]) then
        redis.call('DEL', k)
        leave(k)
      end
      out[#out + 1] = 'X'
    else
      out[#out + 1] = 'N'
    end
  elseif cur and cur ~= digest and app ~= '2' then
    out[#out + 1] = 'C'
  elseif t == '621' and seen[7] ~= aux and taken(k, aux) and cur ~= digest then
    -- The waybill this list names is another order's (its list came first):
    -- refused, stored nowhere, rather than left to time out waiting for it.
    out[#out + 1] = 'O'
  else
    -- New, an identical copy, or a change (appType 2) replacing the stored one.
    -- A list that names a waybill key its order has not noted yet joins the
    -- waybill in the same write; every other document is one plain HSET.
    local status, joins = 'A', t == '621' and seen[7] ~= aux
    local set = joins and {'w', aux} or nil
    if cur == digest then
      status = 'S'
    elseif joins then
      append(set, {'d621', payload, 'm621', meta, 'h621', digest})
      if not first then
        first = now
        append(set, {'first', now})
      end
      mine[k .. t] = i
    elseif first then
      redis.call('HSET', k, 'd' .. t, payload, 'm' .. t, meta, 'h' .. t, digest)
      mine[k .. t] = i
    else
      first = now
      redis.call('HSET', k, 'd' .. t, payload, 'm' .. t, meta, 'h' .. t, digest, 'first', now)
      mine[k .. t] = i
    end
    seen[at] = digest
    if joins then
      if seen[7] then release(k, seen[7], seen) end
      claim(k, aux, seen, set, wbs[aux])
      redis.call('HSET', k, unpack(set))
    end
    if seen[3] and seen[4] and seen[5] and seen[6] then
      -- A complete order stays in the pending set until its decision is
      -- confirmed (a worker that dies before deciding leaves it to the sweep):
      -- only one whose documents were all deleted earlier in this call is added.
      if gone[k] then wait(k, first) end
      complete[k] = true
      out[#out + 1] = 'M'
      out[#out + 1] = k
      out[#out + 1] = first
      local need = {}
      for j = 1, 4 do
        if not mine[k .. types[j]] then
          need[#need + 1] = 'd' .. types[j]
          need[#need + 1] = 'm' .. types[j]
        end
      end
      local got = #need > 0 and redis.call('HMGET', k, unpack(need)) or need
      local n = 0
      for j = 1, 4 do
        local pos = mine[k .. types[j]]
        if pos then
          out[#out + 1] = pos
          out[#out + 1] = false
        else
          out[#out + 1] = got[n + 1]
          out[#out + 1] = got[n + 2]
          n = n + 2
        end
      end
    else
      wait(k, first)
      out[#out + 1] = status
    end
  end
end
-- Incomplete orders (and waybills no list has named yet) wait in the pending
-- set for the timeout sweep (NX: the first arrival's time stays); waybills a
-- list took, and orders whose every document was deleted, leave it.
local left, forgotten = {}, {}
for j = 1, #listed do
  local k = listed[j]
  if waiting[k] then
    left[#left + 1] = waiting[k]
    left[#left + 1] = k
  end
end
if #left > 0 then multi('ZADD', pending, left, 'NX') end
for k in pairs(gone) do forgotten[#forgotten + 1] = k end
if #forgotten > 0 then multi('ZREM', pending, forgotten) end
return out
"""

# Per order key: {'W'} not yet due, {'X'} nothing to do (dropped from pending),
# {'T', first, docs...} due, {'R', dec, first, docs...} decided but
# unconfirmed: re-emit.
TIMEOUT = REEMIT + f"""
local pending = KEYS[1]
local now, timeout, stale, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {{}}
for i = 2, #KEYS do
  local k = KEYS[i]
  local res
  local dec = redis.call('HGET', k, 'dec')
  local first = redis.call('HGET', k, 'first')
  if dec then
    if redis.call('HEXISTS', k, 'emit') == 1 then
      redis.call('ZREM', pending, k)
      res = {{'X'}}
    elseif now - tonumber(redis.call('HGET', k, 'dect') or '0') > stale then
      res = reemit(k, dec, now)
      table.insert(res, 1, 'R')
    else
      res = {{'W'}}
    end
  elseif not first then
    redis.call('ZREM', pending, k)
    res = {{'X'}}
  elseif horizon - tonumber(first) < timeout then
    res = {{'W'}}
  else
    res = redis.call('HMGET', k, {DOC_FIELDS})
    table.insert(res, 1, 'T')
  end
  out[i - 1] = res
end
return out
"""

# First decision stored wins: per key 1 stored now, or the decision stored before.
STORE = """
local now = ARGV[1]
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local existing = redis.call('HGET', k, 'dec')
  if existing then
    out[i] = existing
  else
    redis.call('HSET', k, 'dec', ARGV[i + 1], 'dect', now)
    out[i] = 1
  end
end
return out
"""

# Emission confirmed: keep arrival metadata, digests and the inventory list
# (duplicates, returns, trace), drop the document bodies, leave the pending
# set, let the key expire. KEYS: the pending set, then per order its key and
# the waybill key its list names (the order key again when it has no list):
# the waybill key keeps pointing to the order as long as the order lives.
CONFIRM = MULTI + """
local pending, ttl = KEYS[1], tonumber(ARGV[1])
local done = {}
for i = 2, #KEYS, 2 do
  local k, w = KEYS[i], KEYS[i + 1]
  redis.call('HSET', k, 'emit', 1)
  redis.call('HDEL', k, 'd311', 'd411', 'd511')
  redis.call('EXPIRE', k, ttl)
  if w ~= k then redis.call('EXPIRE', w, ttl) end
  done[#done + 1] = k
end
multi('ZREM', pending, done)
return #done
"""

# Reserve each order's dutiable price against its buyer's annual limit, once
# per order: per key two values, 1, used_before reserved (or already was), or
# 0, used over the limit.
RESERVE = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local field = 'o:' .. ARGV[3 * i - 1]
  local amount, limit = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local seen = redis.call('HMGET', k, 'total', field)
  local total, cur = tonumber(seen[1] or '0'), seen[2]
  if cur then
    out[2 * i - 1], out[2 * i] = 1, total - tonumber(cur)
  elseif total + amount > limit then
    out[2 * i - 1], out[2 * i] = 0, total
  else
    redis.call('HSET', k, field, amount)
    redis.call('HINCRBY', k, 'total', amount)
    redis.call('EXPIRE', k, ttl)
    out[2 * i - 1], out[2 * i] = 1, total
  end
end
return out
"""

# Give reservations back (cancel, return, or a lost decision race).
UNRESERVE = """
local n = 0
for i = 1, #KEYS do
  local k = KEYS[i]
  local field = 'o:' .. ARGV[i]
  local cur = redis.call('HGET', k, field)
  if cur then
    redis.call('HDEL', k, field)
    redis.call('HINCRBY', k, 'total', -tonumber(cur))
    n = n + 1
  end
end
return n
"""

# R9: a waybill number (per carrier, six months) and a payment serial (per
# payment company) belong to one order. KEYS: claim keys of one slot bucket;
# ARGV[1] the retention in seconds, then the claiming order key per claim.
# Reply per claim: 1 when that order holds it (now, or already), else the
# order key that does. Claims in one call are taken in order, so of two
# orders of one batch naming one number the first keeps it.
CLAIM = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if not cur then
    redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ttl)
    out[i] = 1
  elseif cur == ARGV[i + 1] then
    out[i] = 1
  else
    out[i] = cur
  end
end
return out
"""

# Give claims back (a reject, a cancel, a lost decision race): only where the
# order named in ARGV still holds them.
UNCLAIM = """
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
"""

# Windowed cross-order counters for the risk rules. "buyer" keeps the buyer's
# orders (member "orderKey|cents|nearLimit", first time kept, so a replay
# counts once) for 7 days and returns 24 h and 7 d counts and sums; the other
# families keep distinct members (latest time) for 30 days and return their
# number: five values per buyer key, one per other key, in one flat reply.
# Counts read only the window; members older than it are trimmed when
# the set grows past one member (most keys are new and hold one: trimming
# them was a quarter of the calls), so a set never holds more than its window
# plus what aged out since it last grew.
OBSERVE = MULTI + """
local now = tonumber(ARGV[1])
local day = 86400000
local out = {}
for i = 1, #KEYS do
  local k, family, member = KEYS[i], ARGV[2 * i], ARGV[2 * i + 1]
  if family == 'buyer' then
    local added = redis.call('ZADD', k, 'NX', now, member)
    redis.call('PEXPIRE', k, 8 * day)
    local c1, s1, n1, c7, s7 = 0, 0, 0, 0, 0
    local rows = redis.call('ZRANGEBYSCORE', k, '(' .. (now - 7 * day), '+inf', 'WITHSCORES')
    for j = 1, #rows, 2 do
      local _, cents, near = string.match(rows[j], '^(.*)|(%d+)|(%d)$')
      cents = tonumber(cents) or 0
      c7, s7 = c7 + 1, s7 + cents
      if tonumber(rows[j + 1]) > now - day then
        c1, s1 = c1 + 1, s1 + cents
        if near == '1' then n1 = n1 + 1 end
      end
    end
    if added == 1 and c7 > 1 then redis.call('ZREMRANGEBYSCORE', k, '-inf', now - 7 * day) end
    local n = #out
    out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = c1, s1, n1, c7, s7
  else
    local added = redis.call('ZADD', k, now, member)
    redis.call('PEXPIRE', k, 31 * day)
    local n = redis.call('ZCOUNT', k, '(' .. (now - 30 * day), '+inf')
    if added == 1 and n > 1 then redis.call('ZREMRANGEBYSCORE', k, '-inf', now - 30 * day) end
    out[#out + 1] = n
  end
end
return out
"""

# An officer's result for a decided order: per key {'N'} unknown, {'F', final}
# already finalised (idempotent), or {'P', dec} the provisional decision.
REVIEW = """
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local dec = redis.call('HGET', k, 'dec')
  local final = redis.call('HGET', k, 'final')
  if not dec then out[i] = {'N'}
  elseif final then out[i] = {'F', final}
  else out[i] = {'P', dec} end
end
return out
"""

# Store final decisions once: per order {1} stored, {0, existing} finalised
# before. KEYS: per order its key and the waybill key its list names (as
# CONFIRM's); ARGV: the retention, then the finals. A release after review
# starts the 30-day return window later than the decision did: the order's
# retention, and its waybill key's, start again with it.
FINALIZE = """
local ttl = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local k, w = KEYS[2 * i - 1], KEYS[2 * i]
  local existing = redis.call('HGET', k, 'final')
  if existing then out[i] = {0, existing}
  else
    redis.call('HSET', k, 'final', ARGV[i + 1])
    redis.call('EXPIRE', k, ttl)
    if w ~= k then redis.call('EXPIRE', w, ttl) end
    out[i] = {1}
  end
end
return out
"""

BUCKETS = 16
T = TypeVar("T")

# The deployment's namespace, the first part of every key. One process serves
# one deployment, so it is the process's, set once from its settings
# (use_namespace) rather than passed to each of the ~200 calls of the key
# builders. Order keys are also values (a waybill's owner, the ledger's fields,
# decisions' orderKey), so a namespace is a keyspace of its own: nothing in
# one namespace refers to another.
NS = DEFAULT_REDIS_NAMESPACE
_CHOSEN: list[str] = []  # the namespace a use_namespace call set in this process


def use_namespace(namespace: str) -> None:
    """Make `namespace` this process's key namespace. A second, different one
    is refused: keys built before it would name the other deployment's state."""
    global NS
    if not REDIS_NAMESPACE.fullmatch(namespace):
        raise ValueError(f"not a Redis key namespace: {namespace!r}")
    if _CHOSEN and _CHOSEN[0] != namespace:
        raise RuntimeError(f"this process already uses the Redis namespace {_CHOSEN[0]!r}, not {namespace!r}")
    _CHOSEN[:] = [namespace]
    NS = namespace


def reset_namespace() -> None:
    """Back to the default and unchosen (tests that run several deployments)."""
    global NS
    _CHOSEN.clear()
    NS = DEFAULT_REDIS_NAMESPACE


def bucket_of(value: str, buckets: int = BUCKETS) -> int:
    return zlib.crc32(value.encode()) % buckets


# Between the parts of a key: ingest refuses control characters in every
# field (topics/ceb.py), so no ebpCode or orderNo can hold it and two orders
# cannot share a key.
SEP = "\x1f"


def order_key(ebp_code: str, order_no: str, buckets: int = BUCKETS) -> str:
    """An order's key: orderNo is unique per platform (DOMAIN.md §2.2). The slot
    bucket comes from orderNo alone, so the order's waybill key shares it."""
    return NS + ":o:{o%02d}:%s%s%s" % (bucket_of(order_no, buckets), ebp_code, SEP, order_no)


def is_waybill_key(key: str) -> bool:
    """A waybill's own key (waybill_key), not an order's."""
    return key.startswith(":w:", len(NS))


def platform_of(order_key_: str) -> str:
    """The ebpCode in an order key ("" for a waybill key: a waybill names no platform)."""
    return "" if is_waybill_key(order_key_) else order_key_.split(":", 3)[3].split(SEP, 1)[0]


def order_no_of(key: str) -> str:
    """The orderNo in an order key or a waybill key."""
    rest = key.split(":", 3)[3]
    return rest.split(SEP, 1)[0] if is_waybill_key(key) else rest.split(SEP, 1)[1]


def waybill_key(order_no: str, logistics_code: str, logistics_no: str, buckets: int = BUCKETS) -> str:
    """Where a waybill (which names no platform) waits until a list names it (see MATCH)."""
    return NS + ":w:{o%02d}:%s%s%s%s%s" % (bucket_of(order_no, buckets), order_no, SEP, logistics_code, SEP,
                                           logistics_no)


def decided_waybill_key(decision: dict[str, Any], buckets: int = BUCKETS) -> str:
    """The waybill key a decided order's list names; the order's own key when
    it has none (a timeout without a list, or a waybill decided alone)."""
    order_key_ = decision["orderKey"]
    if not decision.get("logisticsNo") or is_waybill_key(order_key_):
        return order_key_
    return waybill_key_of(decision["orderNo"], decision, buckets)


def waybill_key_of(order_no: str, named: dict[str, Any], buckets: int = BUCKETS) -> str:
    """The waybill key of a waybill's head, or of the waybill a list's head (or
    a decision) names by its logisticsCode/logisticsNo."""
    return waybill_key(order_no, str(named.get("logisticsCode", "")), str(named.get("logisticsNo", "")), buckets)


def order_keys_for(r: Any, order_no: str, buckets: int = BUCKETS, scan: bool = False) -> list[str]:
    """Every platform's order key for an orderNo, for operators' commands that
    are given an orderNo alone: the decided ones from the orderNo index (kept
    with each decision, see order_index_key), the pending ones from the
    pending set of the orderNo's slot bucket (a ZSCAN of that set only). With
    `scan`, the whole keyspace as well: orders decided before the index
    existed (minutes for millions of keys; never on a request path)."""
    tag = "{o%02d}" % bucket_of(order_no, buckets)
    pattern = NS + ":o:" + _glob_escape(tag) + ":*" + SEP + _glob_escape(order_no)
    found = {as_text(k) for k in r.hvals(order_index_key(order_no, buckets))}
    found.update(as_text(member) for member, _ in r.zscan_iter(pending_key(order_no, buckets), match=pattern,
                                                             count=1000))
    if scan:
        found.update(as_text(k) for k in r.scan_iter(match=pattern, count=1000))
    # An index entry can outlive its order (deleted by hand, or expired first
    # within the same second): only keys that exist are orders. One or two.
    return [k for k in sorted(found) if r.exists(k)]


def as_text(value: Any) -> str:
    """A Redis reply's bytes (or a str already) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\{}^" else c for c in text)


def pending_key(order_no: str, buckets: int = BUCKETS) -> str:
    """The pending set of an orderNo's orders and waybills."""
    return NS + ":p:{o%02d}" % bucket_of(order_no, buckets)


def deployments_key() -> str:
    """Topic prefix -> when a worker of that deployment last swept (ms): more
    than one live means two deployments share this namespace (Pipeline._count_deployments)."""
    return NS + ":deployments"


def epoch_keys(buckets: int = BUCKETS) -> list[str]:
    """One marker per slot bucket of the match state and of the ledgers, never
    expiring: one that disappears means Redis lost that bucket's data (a restart
    without persistence, an empty replica promoted, a cluster shard lost,
    keys evicted) while workers ran (Pipeline._check_keyspace)."""
    return [NS + ":epoch:{o%02d}" % b for b in range(buckets)] + \
        [NS + ":epoch:{q%02d}" % b for b in range(buckets)]


def halt_key() -> str:
    """Set when Redis lost data under CLEARANCE_REDIS_LOSS=halt: every worker of
    the namespace stops deciding until it is deleted (`clearance resume`)."""
    return NS + ":halted"


def watermark_key(group: str) -> str:
    # One small hash per consumer group: worker id -> "watermark_ms:reported_ms".
    return f"{NS}:wm:{{{group}}}"


def pending_keys(buckets: int = BUCKETS) -> list[str]:
    return [NS + ":p:{o%02d}" % b for b in range(buckets)]


def ledger_key(buyer: str, year: str, buckets: int = BUCKETS, ledger: str = "") -> str:
    key = NS + ":q:{q%02d}:%s:%s" % (bucket_of(buyer, buckets), buyer, year)
    return key + ":" + ledger if ledger else key


def claim_key(kind: str, issuer: str, number: str, buckets: int = BUCKETS) -> str:
    """Who holds a waybill number or payment serial (CLAIM); the bucket comes from the number."""
    return NS + ":u:{u%02d}:%s:%s%s%s" % (bucket_of(number, buckets), kind, issuer, SEP, number)


def order_id(order_key: str) -> str:
    """ebpCode:orderNo of an order key, as a decisionId spells it."""
    return order_key.split(":", 3)[3].replace(SEP, ":")


def feature_key(family: str, entity: str, buckets: int = BUCKETS) -> str:
    return NS + ":f:{f%02d}:%s:%s" % (bucket_of(entity, buckets), family, entity)


_DISTINCT_FEATURE = {"address": "address_distinct_buyers_30d", "phone": "phone_distinct_buyers_30d",
                     "buyer_addresses": "buyer_distinct_addresses_30d"}


def feature_replies(families: Iterable[str], flat: list[Any]) -> list[list[Any]]:
    """OBSERVE's flat reply as one list per key: five values for a buyer key, one otherwise."""
    out, i = [], 0
    for family in families:
        width = 5 if family == "buyer" else 1
        out.append(flat[i:i + width])
        i += width
    return out


def feature_values(family: str, reply: list[Any]) -> dict[str, float]:
    if family == "buyer":
        c1, s1, n1, c7, s7 = (int(x) for x in reply)
        return {"buyer_orders_24h": c1, "buyer_amount_24h": s1 / 100, "buyer_near_limit_24h": n1,
                "buyer_orders_7d": c7, "buyer_amount_7d": s7 / 100}
    return {_DISTINCT_FEATURE[family]: int(reply[0])}


def serial_key(customs_code: str, year: str) -> str:
    return NS + ":seq:{" + customs_code + "}:" + year


def slot_tag(key: str) -> str:
    return key[key.index("{"):key.index("}") + 1]


def group_by_slot(items: Iterable[T], key: Callable[[T], str]) -> dict[str, list[T]]:
    """Items grouped by the hash tag of their key: one script call per group."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(slot_tag(key(item)), []).append(item)
    return groups


_GENERATION = [0]  # raised by forget_scripts(): every script is loaded again before its next use


def forget_scripts() -> None:
    """After a Redis error (it may have restarted and lost its script cache)."""
    _GENERATION[0] += 1


class _Lua:
    """A Lua script for the worker's asyncio client, called by EVALSHA.

    redis-py's Script, queued in a pipeline, makes the pipeline ask Redis
    `SCRIPT EXISTS` before it runs: one more round trip per pipeline, and a
    batch runs several. This one loads itself once (again after
    forget_scripts()) and queues a bare EVALSHA. Should Redis have lost it
    anyway, the pipeline fails with NOSCRIPT, the batch is retried, and the
    retry loop calls forget_scripts() first."""

    def __init__(self, redis: Any, source: str):
        self.redis, self.source = redis, source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.generation = -1

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any] = (), client: Any = None) -> Any:
        if self.generation != _GENERATION[0]:
            await self._load()
        if client is not None and client is not self.redis:
            client.evalsha(self.sha, len(keys), *keys, *args)  # queued in the pipeline
            return None
        try:
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            forget_scripts()
            await self._load()
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)

    async def _load(self) -> None:
        generation = _GENERATION[0]
        sha = await self.redis.script_load(self.source)
        self.sha = as_text(sha)
        self.generation = generation


def _script(redis: Any, source: str) -> Any:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    # The gate's synchronous client keeps redis-py's own Script.
    if isinstance(redis, (aioredis.Redis, RedisCluster)):
        return _Lua(redis, source)
    script = redis.register_script(source)
    _SOURCES[script.sha] = source
    return script


class Scripts:
    """The scripts of one Redis client (EVALSHA)."""

    def __init__(self, redis: Any):
        self.match = _script(redis, MATCH)
        self.timeout = _script(redis, TIMEOUT)
        self.store = _script(redis, STORE)
        self.confirm = _script(redis, CONFIRM)
        self.reserve = _script(redis, RESERVE)
        self.unreserve = _script(redis, UNRESERVE)
        self.claim = _script(redis, CLAIM)
        self.unclaim = _script(redis, UNCLAIM)
        self.observe = _script(redis, OBSERVE)
        self.review = _script(redis, REVIEW)
        self.finalize = _script(redis, FINALIZE)


_MATCH_WIDTH = {b"A": 1, b"S": 1, b"C": 1, b"O": 1, b"X": 1, b"N": 1, b"L": 1, b"D": 2, b"M": 11, b"R": 12}


def match_replies(flat: list[Any]) -> list[list[Any]]:
    """MATCH's flat reply as one list per document (see MATCH)."""
    out, i = [], 0
    while i < len(flat):
        width = _MATCH_WIDTH[flat[i]]
        out.append(flat[i:i + width])
        i += width
    return out


def pairs(flat: list[Any]) -> list[tuple[Any, Any]]:
    """Two values per item (RESERVE, GUARANTEE_USE)."""
    return list(zip(flat[::2], flat[1::2]))


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


# --------------------------------------------------------------------------- after release

# Parcel state at the gates: releasable → exited → returned, or cancelled.
# The key is by waybill number, so a gate's scan is one lookup. A releasable
# parcel is kept until it leaves or is cancelled; each later state keeps it
# for the retention (the last ARGV) from then: an exited parcel through its
# 30-day return window, a returned or cancelled one for trace.
PARCEL_RELEASE = """
local k = KEYS[1]
local cur = redis.call('HMGET', k, 'state', 'invtNo')
local st, held = cur[1], cur[2]
if redis.call('HEXISTS', k, 'x:' .. ARGV[2]) == 1 then return 0 end  -- its list was cancelled first
if st and held and held ~= '' and ARGV[2] ~= '' and held ~= ARGV[2] then
  if st == 'cancelled' then
    redis.call('DEL', k)  -- the number's earlier list was cancelled; this is another list's parcel
    st = nil
  else
    -- Another list's parcel has this waybill number (two carriers' numbers
    -- alike, or lists released before numbers were claimed): neither leaves
    -- on it until one of the two lists is cancelled (PARCEL_CANCEL).
    if st == 'releasable' then redis.call('HSET', k, 'state', 'conflict') end
    redis.call('HSET', k, 'c:orderNo', ARGV[1], 'c:invtNo', ARGV[2], 'c:areaCode', ARGV[3], 'c:billNo', ARGV[4],
               'c:releasedAt', ARGV[5])
    return -1
  end
end
if st then return 0 end
redis.call('HSET', k, 'state', 'releasable', 'orderNo', ARGV[1], 'invtNo', ARGV[2], 'areaCode', ARGV[3],
           'billNo', ARGV[4], 'releasedAt', ARGV[5], 'seenAt', ARGV[6])
return 1
"""

# KEYS: the parcel, its bucket's exit outbox (same slot). ARGV: gate, time,
# retention, waybill number. The exit event is owed from the moment the exit
# is recorded: the outbox holds it until the broker has acknowledged it, so a
# gate process that dies, or a broker that is down, between the two does not
# lose it (Gate.publish_pending sends what is left).
PARCEL_EXIT = """
local k = KEYS[1]
local state = redis.call('HGET', k, 'state')
if state == 'releasable' then
  redis.call('HSET', k, 'state', 'exited', 'gate', ARGV[1], 'exitedAt', ARGV[2])
  redis.call('EXPIRE', k, tonumber(ARGV[3]))
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
  return {1, 'exited'}
end
if state == 'exited' then return {0, 'exited', redis.call('HGET', k, 'gate'), redis.call('HGET', k, 'exitedAt')} end
return {-1, state or 'unknown'}
"""

# A cancel wins over a release the gate has not recorded yet: the parcel is
# created as cancelled and the late release event cannot make it releasable.
# ARGV: time, orderNo, retention, invtNo. The key is the waybill number, so a
# cancel names its list: one of two lists in conflict (PARCEL_RELEASE) being
# cancelled lets the other's parcel go (reply 2 and its area); a list whose
# number another list's parcel holds is marked cancelled in that hash ('x:',
# reply 3: that parcel stays as it is, in its area).
PARCEL_CANCEL = """
local k = KEYS[1]
local cur = redis.call('HMGET', k, 'state', 'invtNo', 'c:invtNo')
local st, held, other = cur[1], cur[2], cur[3]
local c = {'c:orderNo', 'c:invtNo', 'c:areaCode', 'c:billNo', 'c:releasedAt'}
if other and ARGV[4] == other then
  redis.call('HDEL', k, unpack(c))
  redis.call('HSET', k, 'x:' .. ARGV[4], ARGV[1])  -- a replay of its release changes nothing
  if st ~= 'conflict' then return {1, 'cancelled'} end
  redis.call('HSET', k, 'state', 'releasable')
  return {2, 'releasable', redis.call('HGET', k, 'areaCode')}
end
if st == 'conflict' and ARGV[4] == held then
  local v = redis.call('HMGET', k, unpack(c))
  redis.call('HDEL', k, unpack(c))
  redis.call('HSET', k, 'x:' .. ARGV[4], ARGV[1])
  redis.call('HSET', k, 'state', 'releasable', 'orderNo', v[1], 'invtNo', v[2], 'areaCode', v[3], 'billNo', v[4],
             'releasedAt', v[5])
  return {2, 'releasable', v[3]}
end
if held and ARGV[4] ~= '' and held ~= ARGV[4] then
  if redis.call('HSETNX', k, 'x:' .. ARGV[4], ARGV[1]) == 0 then return {0, 'cancelled'} end
  return {3, 'cancelled'}  -- the parcel (and its area's set) is the other list's
end
if st == 'exited' or st == 'returned' then return {-1, st} end
if st == 'cancelled' then return {0, st} end
redis.call('HSET', k, 'state', 'cancelled', 'cancelledAt', ARGV[1], 'orderNo', ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', k, 'invtNo', ARGV[4]) end
redis.call('EXPIRE', k, tonumber(ARGV[3]))
return {1, 'cancelled'}
"""

PARCEL_RETURN = """
local k = KEYS[1]
local state = redis.call('HGET', k, 'state')
if state == 'exited' then
  redis.call('HSET', k, 'state', 'returned', 'returnedAt', ARGV[1])
  redis.call('EXPIRE', k, tonumber(ARGV[2]))
  return {1, 'returned', redis.call('HGET', k, 'exitedAt')}
end
if state == 'returned' then return {0, 'returned'} end
return {-1, state or 'unknown'}
"""

# Give part of an order's reservation back for a return, once per return id.
REFUND = """
local k = KEYS[1]
local id = 'r:' .. ARGV[3]
if redis.call('HEXISTS', k, id) == 1 then return 0 end
local amount = tonumber(ARGV[2])
redis.call('HSET', k, id, amount)
if redis.call('HEXISTS', k, 'o:' .. ARGV[1]) == 1 then
  redis.call('HINCRBY', k, 'o:' .. ARGV[1], -amount)
  redis.call('HINCRBY', k, 'total', -amount)
end
return 1
"""

# Tax aggregation per period: per guarantor sums in KEYS[1], each record
# counted once: the ids already counted are kept beside the sums, in KEYS[2]
# (the same slot), with a TTL, so the sums stay a small hash that `clearance
# tax` reads whole (a period of a busy zone counts millions of lists). Ids
# counted by versions that kept them in the sums hash ('rec:<id>') are still
# honoured. ARGV: the ids' TTL, then per record: id, guarantor, customs, VAT,
# consumption, total (cents), +1/-1 list. One read and one write of ids and
# five increments per guarantor: not six calls per record.
TAX_AGGREGATE = MULTI + """
local k, counted_key = KEYS[1], KEYS[2]
local ids, old = {}, {}
for i = 2, #ARGV, 7 do
  ids[#ids + 1] = ARGV[i]
  old[#old + 1] = 'rec:' .. ARGV[i]
end
local counted = multi('HMGET', counted_key, ids)
local counted_before = multi('HMGET', k, old)
local new, sums, guarantors, seen = {}, {}, {}, {}
for j = 1, #ids do
  local id = ids[j]
  if not counted[j] and not counted_before[j] and not seen[id] then
    seen[id] = true
    new[#new + 1] = id
    new[#new + 1] = 1
    local i = 7 * (j - 1) + 2
    local a = ARGV[i + 1]
    local sum = sums[a]
    if not sum then
      sum = {0, 0, 0, 0, 0}
      sums[a] = sum
      guarantors[#guarantors + 1] = a
    end
    for f = 1, 5 do sum[f] = sum[f] + tonumber(ARGV[i + 1 + f]) end
  end
end
if #new > 0 then
  multi('HSET', counted_key, new)
  redis.call('EXPIRE', counted_key, ARGV[1])
end
local fields = {':customsTax', ':valueAddedTax', ':consumptionTax', ':taxTotal', ':lists'}
for _, a in ipairs(guarantors) do
  for f = 1, 5 do
    redis.call('HINCRBY', k, a .. fields[f], string.format('%d', sums[a][f]))
  end
end
return #new / 2
"""
# Counted tax record ids are kept this long: a record is replayed, if ever,
# within the broker's retention (days), not months later.
TAX_RECORD_TTL_S = 100 * 24 * 3600

# The trace indexes, one call per slot bucket. ARGV: the TTL, then per key a
# field and a value: logisticsNo / invtNo -> order key (a string, field ""),
# orderNo -> {ebpCode: order key} (a hash: several platforms may use one).
INDEX = """
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  local k, field, value = KEYS[i], ARGV[2 * i], ARGV[2 * i + 1]
  if field == '' then
    redis.call('SET', k, value, 'EX', ttl)
  else
    redis.call('HSET', k, field, value)
    redis.call('EXPIRE', k, ttl)
  end
end
return #KEYS
"""

# A guarantor's guarantee: charge each list's tax once, in the order given
# (ARGV: now, then invtNo, cents, order key per list; one call per guarantor
# per batch); per list two values: 1, remaining charged (remaining -1 when
# the guarantor has no guarantee account: not checked), or 0, remaining not
# enough: the list is held until a top-up.
GUARANTEE_USE = MULTI + """
local g, held = KEYS[1], KEYS[2]
local now = ARGV[1]
local out = {}
if redis.call('EXISTS', g) == 0 then
  for i = 2, #ARGV, 3 do out[#out + 1] = 1; out[#out + 1] = -1 end
  return out
end
local account = redis.call('HMGET', g, 'balance', 'used')
local balance, used = tonumber(account[1] or '0'), tonumber(account[2] or '0')
local before = used
local fields = {}
for i = 2, #ARGV, 3 do fields[#fields + 1] = 'i:' .. ARGV[i] end
local charged = multi('HMGET', g, fields)
local new, released, waiting, seen = {}, {}, {}, {}
for j = 1, #fields do
  local i = 3 * j - 1
  local amount, order = tonumber(ARGV[i + 1]), ARGV[i + 2]
  if charged[j] or seen[fields[j]] then
    out[#out + 1] = 1; out[#out + 1] = balance - used
  elseif balance - used >= amount then
    used = used + amount
    seen[fields[j]] = true
    new[#new + 1] = fields[j]
    new[#new + 1] = amount
    released[#released + 1] = order
    out[#out + 1] = 1; out[#out + 1] = balance - used
  else
    waiting[#waiting + 1] = now
    waiting[#waiting + 1] = order
    out[#out + 1] = 0; out[#out + 1] = balance - used
  end
end
if used ~= before then redis.call('HINCRBY', g, 'used', string.format('%d', used - before)) end
if #new > 0 then multi('HSET', g, new) end
if #released > 0 then multi('ZREM', held, released) end
-- A list held earlier and charged now leaves the held set; one held now joins it.
if #waiting > 0 then multi('ZADD', held, waiting, 'NX') end
return out
"""

GUARANTEE_RESTORE = """
local g = KEYS[1]
local amount = redis.call('HGET', g, 'i:' .. ARGV[1])
if not amount then return 0 end
redis.call('HDEL', g, 'i:' .. ARGV[1])
redis.call('HINCRBY', g, 'used', -tonumber(amount))
return 1
"""


# A partial return gives its tax back to the guarantee, once per return (guid).
GUARANTEE_REFUND = """
local k = KEYS[1]
if redis.call('EXISTS', k) == 0 then return 0 end
if redis.call('HSETNX', k, 'r:' .. ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', k, 'used', -tonumber(ARGV[2]))
return 1
"""


# A top-up releases a held list: overwrite its final decision only if that is
# the held one (599), so a cancel or an earlier release is never undone.
RELEASE_HELD = """
local k, w = KEYS[1], KEYS[2]
local final = redis.call('HGET', k, 'final')
if final and not string.find(final, '"status":599', 1, true) then return 0 end
redis.call('HSET', k, 'final', ARGV[1])
redis.call('EXPIRE', k, tonumber(ARGV[2]))
if w ~= k then redis.call('EXPIRE', w, tonumber(ARGV[2])) end
return 1
"""


def parcel_key(logistics_no: str, buckets: int = BUCKETS) -> str:
    return NS + ":parcel:{p%02d}:%s" % (bucket_of(logistics_no, buckets), logistics_no)


def released_count_key() -> str:
    """Parcels the gates have made releasable, in all (the demo's line)."""
    return NS + ":gate:{released}"


def replayed_key(deadletter_topic: str) -> str:
    """Dead letters replayed from a topic: "partition:offset" -> when, and to where."""
    return NS + ":dlq:replayed:" + deadletter_topic


def exit_outbox_key(bucket: int) -> str:
    """Exits recorded whose event the broker has not acknowledged yet, one sorted
    set per bucket of waybill numbers (scored by the exit's time), in the slot of
    the bucket's parcels so that PARCEL_EXIT writes both at once."""
    return NS + ":gate:exits:{p%02d}" % bucket


def exit_outbox_keys(buckets: int = BUCKETS) -> list[str]:
    return [exit_outbox_key(b) for b in range(buckets)]


# Exits owed an event whose time (the score) is at or before ARGV[1], at most
# ARGV[3] of them, are claimed by moving their score to ARGV[2] (now): another
# gate process's sweep leaves them alone until they are due again.
EXIT_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], m) end
return due
"""


def area_key(area: str) -> str:
    return NS + ":area:{" + area + "}"


def cancel_area_moves(reply: list[Any], area: str) -> list[tuple[str, str]]:
    """What a PARCEL_CANCEL reply means for the bonded areas' sets of releasable
    parcels, as (SREM | SADD, area key): the cancelled list's parcel leaves its
    area's set (codes 1 and 2), and on 2 the other list's parcel, released by
    the cancel, joins its own. Code 3 leaves the other list's parcel as it is."""
    code = int(reply[0])
    moves = [("SREM", area_key(area or "-"))] if code in (1, 2) else []
    if code == 2:
        moves.append(("SADD", area_key(as_text(reply[2]) or "-")))
    return moves


def index_key(kind: str, value: str, buckets: int = BUCKETS) -> str:
    """logisticsNo / invtNo → the order key, for trace."""
    return NS + ":idx:{i%02d}:%s:%s" % (bucket_of(value, buckets), kind, value)


def order_index_key(order_no: str, buckets: int = BUCKETS) -> str:
    """orderNo → {ebpCode: order key} of its decided orders: an orderNo is
    unique per platform only, so it is a hash, not a string like index_key's."""
    return index_key("on", order_no, buckets)


def tax_period_key(period: str) -> str:
    return NS + ":tax:{" + period + "}"


def tax_records_key(period: str) -> str:
    """The ids of a period's tax records already counted (same slot as its sums)."""
    return NS + ":tax:{" + period + "}:rec"


def guarantee_keys(assure: str, buckets: int = BUCKETS) -> tuple[str, str]:
    tag = "{g%02d}" % bucket_of(assure, buckets)
    return f"{NS}:g:{tag}:{assure}", f"{NS}:g:{tag}:{assure}:held"


class AfterScripts:
    def __init__(self, redis: Any):
        self.release = _script(redis, PARCEL_RELEASE)
        self.exit = _script(redis, PARCEL_EXIT)
        self.exit_claim = _script(redis, EXIT_CLAIM)
        self.cancel = _script(redis, PARCEL_CANCEL)
        self.ret = _script(redis, PARCEL_RETURN)
        self.refund = _script(redis, REFUND)
        self.tax = _script(redis, TAX_AGGREGATE)
        self.index = _script(redis, INDEX)
        self.guarantee_use = _script(redis, GUARANTEE_USE)
        self.guarantee_restore = _script(redis, GUARANTEE_RESTORE)
        self.guarantee_refund = _script(redis, GUARANTEE_REFUND)
        self.release_held = _script(redis, RELEASE_HELD)


# --------------------------------------------------------------------------- client

class _PackedByHiredis:
    """Commands packed into RESP by hiredis in C. redis-py's asyncio connections
    pack in Python, argument by argument; a batch's Lua calls carry hundreds of
    arguments (every document's payload), so packing was a tenth of the worker's
    CPU (benchmarks/README.md)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # A command name with its sub-command in one string ("CONFIG GET") is sent
        # as separate arguments, as redis-py does.
        if isinstance(args[0], str):
            args = tuple(args[0].encode().split()) + args[1:]
        elif b" " in args[0]:
            args = tuple(args[0].split()) + args[1:]
        return [hiredis.pack_command(args)]


def memory_of(info: dict[Any, Any]) -> tuple[int, int]:
    """(used_memory, maxmemory) from an INFO memory reply (keys as str or bytes)."""
    def get(name: str) -> int:
        value = info.get(name, info.get(name.encode(), 0))
        return int(value.decode() if isinstance(value, bytes) else value or 0)
    return get("used_memory"), get("maxmemory")


def cluster_seeds(nodes: str, source: str = "REDIS_CLUSTER_NODES") -> list[tuple[str, int]]:
    """REDIS_CLUSTER_NODES or REDIS_SENTINELS ("host:port,[::1]:port") as addresses."""
    return host_ports(nodes, source)


# Every client's limit on a connect and on a reply, unless REDIS_URL says
# otherwise (`?socket_timeout=10&socket_connect_timeout=10`). redis-py waits
# for ever by default before its version 8: a Redis frozen or cut off without a
# reset would hang a gate's scan, its consumer loop or a worker's sweep instead
# of failing it, and the callers' retries, 503s and alerts never see it.
SOCKET_TIMEOUT_S = resp.TIMEOUT_S
_TIMEOUTS = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": SOCKET_TIMEOUT_S}


def _sentinel_master(url: str, sentinels: str, master: str, sentinel_password: str, asyncio_: bool) -> Any:
    """A client of the primary the Sentinels name for `master`: redis-py asks
    them for its address on connecting, and again after a failover (a
    connection refused, or the old primary answering READONLY as a replica).
    REDIS_URL gives the database, credentials and TLS of the data nodes; its
    host and port are not used. The Sentinels are asked with the same time
    limits, and `sentinel_password` if they require one."""
    if asyncio_:
        from redis.asyncio import Redis
        from redis.asyncio.connection import SSLConnection, parse_url
        from redis.asyncio.sentinel import Sentinel
    else:
        from redis import Redis
        from redis.connection import SSLConnection, parse_url
        from redis.sentinel import Sentinel

    kwargs: dict[str, Any] = {**_TIMEOUTS, **parse_url(url)}
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True  # the Sentinel pool picks its own TLS connection class
    if asyncio_:
        kwargs["decode_responses"] = False
    # The Sentinels are reached as the data nodes are: the same time limits,
    # and TLS with the same CA and client certificate when REDIS_URL is rediss://.
    to_sentinels = {k: v for k, v in kwargs.items() if k.startswith(("socket_", "ssl"))}
    if sentinel_password:
        to_sentinels["password"] = sentinel_password
    return Sentinel(cluster_seeds(sentinels, "REDIS_SENTINELS"), sentinel_kwargs=to_sentinels,
                    **kwargs).master_for(master, redis_class=Redis)


def sync_client(url: str, cluster: bool = False, seeds: str = "", sentinel_master: str = "",
                sentinel_password: str = "") -> Any:
    """A synchronous client for the gate, the CLI and trace (RedisCluster when
    `cluster`: it asks `seeds` and REDIS_URL's node for the slot map; with
    `sentinel_master`, the primary the Sentinels `seeds` name)."""
    import redis

    if sentinel_master:
        return _sentinel_master(url, seeds, sentinel_master, sentinel_password, asyncio_=False)
    if cluster:
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster.from_url(url, startup_nodes=[ClusterNode(h, p) for h, p in cluster_seeds(seeds)],
                                     **_TIMEOUTS)
    return redis.Redis.from_url(url, **_TIMEOUTS)


def sync_client_for(settings: Any) -> Any:
    """sync_client for the Redis the settings name (REDIS_URL, REDIS_CLUSTER,
    REDIS_CLUSTER_NODES, REDIS_SENTINELS), in its namespace."""
    use_namespace(settings.redis_namespace)
    if settings.redis_sentinels:
        return sync_client(settings.redis_url, seeds=settings.redis_sentinels,
                           sentinel_master=settings.redis_sentinel_master,
                           sentinel_password=settings.redis_sentinel_password)
    return sync_client(settings.redis_url, settings.redis_cluster, settings.redis_cluster_nodes)


def async_client_for(settings: Any) -> Any:
    """async_client for the Redis the settings name, in its namespace."""
    use_namespace(settings.redis_namespace)
    if settings.redis_sentinels:
        return async_client(settings.redis_url, seeds=settings.redis_sentinels,
                            sentinel_master=settings.redis_sentinel_master,
                            sentinel_password=settings.redis_sentinel_password)
    return async_client(settings.redis_url, settings.redis_cluster, settings.redis_cluster_nodes)


class _PerNode:
    """A synchronous cluster pipeline for script and SREM calls (see script_pipeline).

    redis-py's cluster pipelines refuse EVALSHA. The calls are grouped by the
    node of their first key, each node gets its share in one plain pipeline,
    and the replies are put back in order: one round trip per node, not per
    call. A call a node turns away (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) has not
    run; it goes again once the slot map is read again, as do the calls of a
    node whose connection failed (they may have run: every script is
    idempotent), and those still turned away go one by one through the
    cluster client, which follows redirections. A node that lost the script
    (NOSCRIPT, after a restart) is given it again."""

    _REDIRECTED = (rx.MovedError, rx.AskError, rx.TryAgainError, rx.ClusterDownError)

    def __init__(self, r: Any):
        self.r, self.calls = r, []

    def __len__(self) -> int:
        return len(self.calls)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.calls.append(("EVALSHA", sha, numkeys, *keys_and_args))

    def srem(self, key: Any, *members: Any) -> None:
        self.calls.append(("SREM", key, *members))

    def script_load(self, source: str) -> Any:  # redis-py's Script after NOSCRIPT
        return self.r.script_load(source)

    def execute(self) -> list[Any]:
        calls, self.calls = self.calls, []
        replies: list[Any] = [None] * len(calls)
        again = self._send(calls, range(len(calls)), replies)
        if again:
            again = self._send(calls, again, replies)  # with the map read again, the scripts loaded
        for i in again:  # still turned away: one by one, as the cluster client redirects
            replies[i] = self.r.execute_command(*calls[i])
        for reply in replies:  # as a pipeline does: every call ran, then the first error
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _send(self, calls: list[tuple[Any, ...]], indices: Iterable[int], replies: list[Any]) -> list[int]:
        """One pipeline per node for the calls at `indices`; the indices to send again."""
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i in indices:
            node = self.r.get_node_from_key(resp.first_key(calls[i]))
            by_node.setdefault(node.name, (node, []))[1].append(i)
        again: list[int] = []
        moved, lost = False, set()
        for node, share in by_node.values():
            pipe = self.r.get_redis_connection(node).pipeline(transaction=False)
            for i in share:
                pipe.execute_command(*calls[i])
            try:
                answers = pipe.execute(raise_on_error=False)
            except (rx.ConnectionError, rx.TimeoutError):  # a failover: ask the cluster again
                again.extend(share)
                moved = True
                continue
            for i, answer in zip(share, answers):
                if isinstance(answer, NoScriptError):
                    lost.add(calls[i][1])
                    again.append(i)
                elif isinstance(answer, self._REDIRECTED):
                    moved = True
                    again.append(i)
                else:
                    replies[i] = answer
        if moved:
            self.r.nodes_manager.initialize()
        for sha in lost:
            self.r.script_load(_SOURCES[sha])  # on every primary
        return sorted(again)


# Script sources by SHA-1, for a node that lost one (_PerNode).
_SOURCES: dict[str, str] = {}


def script_pipeline(r: Any) -> Any:
    """A pipeline for a synchronous client's script calls: on one Redis, redis-py's
    own; on a cluster, one per node (_PerNode), as redis-py's refuse EVALSHA."""
    from redis.cluster import RedisCluster

    return _PerNode(r) if isinstance(r, RedisCluster) else r.pipeline(transaction=False)


def async_client(url: str, cluster: bool = False, seeds: str = "", sentinel_master: str = "",
                 sentinel_password: str = "") -> Any:
    """The worker's asyncio Redis client (bytes replies, hiredis packing; RedisCluster
    when `cluster`, the Sentinels' primary with `sentinel_master`, as sync_client)."""
    import redis.asyncio as aioredis
    from redis.asyncio import connection as c

    if sentinel_master:
        return _sentinel_master(url, seeds, sentinel_master, sentinel_password, asyncio_=True)
    if cluster:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        return RedisCluster.from_url(url, decode_responses=False,
                                     startup_nodes=[ClusterNode(h, p) for h, p in cluster_seeds(seeds)],
                                     **_TIMEOUTS)
    client = aioredis.from_url(url, decode_responses=False, **_TIMEOUTS)
    pool = client.connection_pool
    base = pool.connection_class
    if base in (c.Connection, c.SSLConnection, c.UnixDomainSocketConnection):
        pool.connection_class = type(f"Packed{base.__name__}", (_PackedByHiredis, base), {})
    return client
