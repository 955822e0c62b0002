"""The triage queue's Lua scripts: every write that must be atomic is one of these.

Redis' Lua has SHA-1 but no SHA-256, so the audit hash chain carries its own
SHA-256 (LuaBitOp, bundled with Redis and Valkey); ``tests/test_triage_audit.py``
checks it against hashlib. Each script is ``PRELUDE`` + its body.

Times: ``now`` is the server's clock (``TIME``) for leases, snoozes, rate windows
and audit entries, so reviewers on different machines agree on when a lease ends;
an alert's ``created_at`` comes from the worker that raised it.

Per-alert and per-site key names are derived from the prefix inside the scripts;
with the keys of one alert in different hash slots this targets a single Redis
primary (with replicas), not Redis Cluster. ACLs still apply to every key a
script touches.
"""

from __future__ import annotations

PRELUDE = r"""
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local rshift, lshift, ror, tobit, tohex = bit.rshift, bit.lshift, bit.ror, bit.tobit, bit.tohex
local K256 = {
0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2}

local function be32(x)
  return string.char(band(rshift(x, 24), 255), band(rshift(x, 16), 255), band(rshift(x, 8), 255), band(x, 255))
end

local function sha256(msg)
  local len = #msg
  local bits = len * 8
  msg = msg .. '\128' .. string.rep('\0', (55 - len) % 64) .. be32(math.floor(bits / 4294967296)) .. be32(bits)
  local H = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}
  local w = {}
  for chunk = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = string.byte(msg, chunk + i * 4, chunk + i * 4 + 3)
      w[i] = bor(lshift(a, 24), lshift(b, 16), lshift(c, 8), d)
    end
    for i = 16, 63 do
      local s0 = bxor(ror(w[i - 15], 7), ror(w[i - 15], 18), rshift(w[i - 15], 3))
      local s1 = bxor(ror(w[i - 2], 17), ror(w[i - 2], 19), rshift(w[i - 2], 10))
      w[i] = tobit(w[i - 16] + s0 + w[i - 7] + s1)
    end
    local a, b, c, d, e, f, g, h = H[1], H[2], H[3], H[4], H[5], H[6], H[7], H[8]
    for i = 0, 63 do
      local t1 = tobit(h + bxor(ror(e, 6), ror(e, 11), ror(e, 25)) + bxor(band(e, f), band(bnot(e), g))
                       + K256[i + 1] + w[i])
      local t2 = tobit(bxor(ror(a, 2), ror(a, 13), ror(a, 22)) + bxor(band(a, b), band(a, c), band(b, c)))
      h, g, f, e, d, c, b, a = g, f, e, tobit(d + t1), c, b, a, tobit(t1 + t2)
    end
    H[1], H[2], H[3], H[4] = tobit(H[1] + a), tobit(H[2] + b), tobit(H[3] + c), tobit(H[4] + d)
    H[5], H[6], H[7], H[8] = tobit(H[5] + e), tobit(H[6] + f), tobit(H[7] + g), tobit(H[8] + h)
  end
  local out = {}
  for i = 1, 8 do out[i] = tohex(H[i]) end
  return table.concat(out)
end

local GENESIS = string.rep('0', 64)
local QUEUES = {'worklist', 'claimed', 'snoozed', 'held', 'backfill'}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ms(x) return string.format('%d', x) end

-- Append one action to the site's stream, chained: hash = sha256(prev .. canonical entry).
local function audit(P, site, action, id, actor, at, detail)
  local head = P .. ':audithead:' .. site
  local prev = redis.call('GET', head) or GENESIS
  local canon = table.concat({'v1', site, action, id, actor, ms(at), detail}, '\31')
  local h = sha256(prev .. canon)
  redis.call('XADD', P .. ':audit:' .. site, '*', 'action', action, 'alert_id', id, 'actor', actor,
             'at', ms(at), 'detail', detail, 'prev', prev, 'hash', h)
  redis.call('SET', head, h)
  return h
end

local function unlist(P, site, id)
  for _, q in ipairs(QUEUES) do redis.call('ZREM', P .. ':' .. q .. ':' .. site, id) end
end

-- Back to the alert's review queue: the worklist, or the backfill queue for a backfilled alert.
local function to_worklist(P, site, id)
  local f = redis.call('HMGET', P .. ':alert:' .. id, 'rank', 'queue')
  unlist(P, site, id)
  redis.call('ZADD', P .. ':' .. (f[2] or 'worklist') .. ':' .. site, f[1], id)
  redis.call('HSET', P .. ':state:' .. id, 'status', 'open')
  redis.call('HDEL', P .. ':state:' .. id, 'actor', 'lease_until', 'snooze_until')
end

-- Return expired claims and ended snoozes to the worklist; release held alerts the hour has room for.
local function reap(P, site, now, limit)
  local n = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':claimed:' .. site, '-inf', ms(now))) do
    local holder = redis.call('HGET', P .. ':state:' .. id, 'actor') or ''
    to_worklist(P, site, id)
    audit(P, site, 'lease_expired', id, 'system', now, '{"holder":"' .. holder .. '"}')
    n = n + 1
  end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':snoozed:' .. site, '-inf', ms(now))) do
    to_worklist(P, site, id)
    audit(P, site, 'snooze_ended', id, 'system', now, '{}')
    n = n + 1
  end
  local rate = P .. ':rate:' .. site
  local free = 1000
  if limit >= 0 then
    redis.call('ZREMRANGEBYSCORE', rate, '-inf', ms(now - 3600000))
    free = limit - redis.call('ZCARD', rate)
  end
  if free > 0 then
    for _, id in ipairs(redis.call('ZRANGE', P .. ':held:' .. site, 0, free - 1)) do
      to_worklist(P, site, id)
      if limit >= 0 then redis.call('ZADD', rate, ms(now), id) end
      audit(P, site, 'released', id, 'system', now, '{}')
      n = n + 1
    end
  end
  return n
end

local function site_of(P, id)
  return redis.call('HGET', P .. ':alert:' .. id, 'site')
end

-- A live claim by someone else blocks resolve and snooze.
local function held_by_other(P, site, id, actor, now)
  local lease = redis.call('ZSCORE', P .. ':claimed:' .. site, id)
  local holder = redis.call('HGET', P .. ':state:' .. id, 'actor')
  if lease and tonumber(lease) > now and holder and holder ~= actor then return holder end
  return nil
end

-- The alert's site, state key and the server time, or an error reply: shared by every
-- action on one alert that a resolved alert must refuse.
local function open_alert(P, id)
  local site = site_of(P, id)
  if not site then return nil, nil, nil, {'err', 'alert_not_found', id} end
  local sk = P .. ':state:' .. id
  if redis.call('HGET', sk, 'status') == 'resolved' then return nil, nil, nil, {'err', 'already_resolved', id} end
  return site, sk, now_ms(), nil
end

-- Give ``holder`` the alert until now + lease_ms (claim and reassign).
local function grant_lease(P, site, sk, id, holder, now, lease_ms)
  unlist(P, site, id)
  local until_ms = now + lease_ms
  redis.call('ZADD', P .. ':claimed:' .. site, ms(until_ms), id)
  redis.call('HSET', sk, 'status', 'claimed', 'actor', holder, 'lease_until', ms(until_ms))
  redis.call('HSETNX', sk, 'claimed_ms', ms(now))
  return until_ms
end
"""

# ARGV: 1 prefix 2 site 3 alert_id 4 json 5 episode 6 priority 7 band 8 created_at 9 created_ms
#       10 dedup event ms 11 score 12 window ms 13 rate limit (-1: none) 14 actor 15 idempotency ttl s
#       16 task id 17 event id 18 expected ppv ('' if none) 19 audit detail
#       20 review queue of a new alert: 'worklist', or 'backfill' (its own queue, outside the rate limit)
ADD_ALERT = PRELUDE + r"""
local P, site, id = ARGV[1], ARGV[2], ARGV[3]
local idem = P .. ':idem:' .. id
local function answer(action, target)
  local f = redis.call('HMGET', P .. ':alert:' .. target, 'json', 'created_at', 'priority')
  return {action, target, f[1], f[2], f[3]}
end
local seen = redis.call('GET', idem)
if seen then
  local sep = string.find(seen, '|', 1, true)
  return answer('replay:' .. string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1))
end
if redis.call('EXISTS', P .. ':alert:' .. id) == 1 then return answer('replay:added', id) end

local now = now_ms()
local event_ms, score, window, limit = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local band_new = tonumber(ARGV[7])
local epk = P .. ':open:' .. ARGV[5]
-- The episode's unresolved alert whose anchor is nearest the event, within the window (late events too).
local open_id, open_score, best = nil, nil, nil
local near = redis.call('ZRANGEBYSCORE', epk, '(' .. ms(event_ms - window), '(' .. ms(event_ms + window), 'WITHSCORES')
for i = 1, #near, 2 do
  local gap = math.abs(event_ms - tonumber(near[i + 1]))
  if (not best or gap < best) and redis.call('HGET', P .. ':state:' .. near[i], 'status') ~= 'resolved' then
    open_id, best = near[i], gap
  end
end
if open_id then open_score = tonumber(redis.call('HGET', P .. ':alert:' .. open_id, 'score')) end

local action, target = nil, id
if open_id then
  target = open_id
  if score > open_score then action = 'updated' else action = 'suppressed' end
end

if action == 'updated' then
  local ak = P .. ':alert:' .. open_id
  local f = redis.call('HMGET', ak, 'band', 'priority', 'created_ms')
  local b, prio = tonumber(f[1]), f[2]
  local became_urgent = band_new == 0 and b > 0
  if band_new < b then b, prio = band_new, ARGV[6] end
  local rank = b * 1e13 + tonumber(f[3])
  redis.call('HSET', ak, 'json', ARGV[4], 'score', ARGV[11], 'band', b, 'priority', prio, 'rank', ms(rank),
             'last_event_id', ARGV[17], 'expected_ppv', ARGV[18])
  redis.call('HINCRBY', ak, 'updates', 1)
  -- The update keeps the alert where it is, at its new rank: open in the worklist, held by the
  -- rate limit, claimed by its reviewer (who sees the new content; the lease is untouched) or
  -- snoozed. An update that makes it urgent overrides the rest (urgent alerts are never held):
  -- a held one goes to the worklist now, a snoozed one wakes at the next reap (any claim or
  -- `triage reap`), a claimed one stays with its reviewer.
  redis.call('ZADD', P .. ':worklist:' .. site, 'XX', ms(rank), open_id)
  local heldq = P .. ':held:' .. site
  if became_urgent and redis.call('ZSCORE', heldq, open_id) then
    redis.call('ZREM', heldq, open_id)
    redis.call('ZADD', P .. ':worklist:' .. site, ms(rank), open_id)
    redis.call('HSET', ak, 'released_ms', ms(now))
    if limit >= 0 then redis.call('ZADD', P .. ':rate:' .. site, ms(now), open_id) end
  else
    redis.call('ZADD', heldq, 'XX', ms(rank), open_id)
  end
  if became_urgent then redis.call('ZADD', P .. ':snoozed:' .. site, 'XX', ms(now), open_id) end
  audit(P, site, 'updated', open_id, ARGV[14], now, ARGV[19])
elseif action == 'suppressed' then
  audit(P, site, 'suppressed', open_id, ARGV[14], now, ARGV[19])
else
  local rate = P .. ':rate:' .. site
  local queue = ARGV[20]
  if queue ~= 'backfill' then queue = 'worklist' end
  if queue == 'backfill' then limit = -1 end
  action = 'added'
  if limit >= 0 then
    redis.call('ZREMRANGEBYSCORE', rate, '-inf', ms(now - 3600000))
    if band_new > 0 and redis.call('ZCARD', rate) >= limit then action = 'held' end
  end
  local rank = band_new * 1e13 + tonumber(ARGV[9])
  redis.call('HSET', P .. ':alert:' .. id, 'json', ARGV[4], 'site', site, 'task', ARGV[16], 'episode', ARGV[5],
             'priority', ARGV[6], 'band', band_new, 'rank', ms(rank), 'created_at', ARGV[8], 'created_ms', ARGV[9],
             'anchor_ms', ARGV[10], 'score', ARGV[11], 'admission', action, 'first_event_id', ARGV[17],
             'last_event_id', ARGV[17], 'expected_ppv', ARGV[18], 'updates', 0)
  if queue == 'backfill' then redis.call('HSET', P .. ':alert:' .. id, 'queue', queue) end
  if action == 'added' then
    redis.call('ZADD', P .. ':' .. queue .. ':' .. site, ms(rank), id)
    if limit >= 0 then redis.call('ZADD', rate, ms(now), id) end
  else
    redis.call('ZADD', P .. ':held:' .. site, ms(rank), id)
  end
  redis.call('ZADD', P .. ':alerts:' .. site, ARGV[9], id)
  redis.call('SADD', P .. ':sites', site)
  redis.call('ZADD', epk, ARGV[10], id)
  audit(P, site, action == 'added' and 'created' or 'held', id, ARGV[14], now, ARGV[19])
end
redis.call('SET', idem, action .. '|' .. target, 'EX', tonumber(ARGV[15]))
redis.call('HINCRBY', P .. ':stats', 'policy_' .. action, 1)
-- Counted here, with the idempotency key, so a replay after a crash never counts it twice or not at all.
if action == 'added' then redis.call('HINCRBY', P .. ':stats', 'triage_entries_added', 1) end
return answer(action, target)
"""

# ARGV: 1 prefix 2 site ('' when by id) 3 alert id ('' = top of the worklist) 4 actor 5 lease ms 6 rate limit
CLAIM = PRELUDE + r"""
local P, site, id, actor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
if id ~= '' then
  site = site_of(P, id)
  if not site then return {'err', 'alert_not_found', id} end
end
reap(P, site, now, tonumber(ARGV[6]))
if id == '' then
  id = redis.call('ZRANGE', P .. ':worklist:' .. site, 0, 0)[1]
  if not id then return {'err', 'worklist_empty', site} end
end
local sk = P .. ':state:' .. id
local st = redis.call('HMGET', sk, 'status', 'actor')
if st[1] == 'resolved' then return {'err', 'already_resolved', id} end
if redis.call('ZSCORE', P .. ':claimed:' .. site, id) and st[2] and st[2] ~= actor then
  return {'err', 'claimed_by_other', st[2]}
end
local until_ms = grant_lease(P, site, sk, id, actor, now, tonumber(ARGV[5]))
audit(P, site, 'claimed', id, actor, now, '{"lease_until":' .. ms(until_ms) .. '}')
return {'ok', id, ms(until_ms)}
"""

# ARGV: 1 prefix 2 alert id 3 actor 4 outcome 5 note 6 audit detail
RESOLVE = PRELUDE + r"""
local P, id, actor = ARGV[1], ARGV[2], ARGV[3]
local site, sk, now, err = open_alert(P, id)
if err then return err end
local other = held_by_other(P, site, id, actor, now)
if other then return {'err', 'claimed_by_other', other} end
unlist(P, site, id)
redis.call('HSETNX', sk, 'claimed_ms', ms(now))
redis.call('HSET', sk, 'status', 'resolved', 'outcome', ARGV[4], 'note', ARGV[5], 'resolved_ms', ms(now),
           'resolved_by', actor)
redis.call('HDEL', sk, 'lease_until', 'snooze_until')
audit(P, site, 'resolved', id, actor, now, ARGV[6])
return {'ok', id}
"""

# ARGV: 1 prefix 2 alert id 3 actor 4 new holder 5 lease ms 6 audit detail
REASSIGN = PRELUDE + r"""
local P, id, actor = ARGV[1], ARGV[2], ARGV[3]
local site, sk, now, err = open_alert(P, id)
if err then return err end
local until_ms = grant_lease(P, site, sk, id, ARGV[4], now, tonumber(ARGV[5]))
audit(P, site, 'reassigned', id, actor, now, ARGV[6])
return {'ok', id, ms(until_ms)}
"""

# ARGV: 1 prefix 2 alert id 3 actor 4 snooze seconds 5 audit detail
SNOOZE = PRELUDE + r"""
local P, id, actor = ARGV[1], ARGV[2], ARGV[3]
local site, sk, now, err = open_alert(P, id)
if err then return err end
local other = held_by_other(P, site, id, actor, now)
if other then return {'err', 'claimed_by_other', other} end
unlist(P, site, id)
local until_ms = now + math.floor(tonumber(ARGV[4]) * 1000)
redis.call('ZADD', P .. ':snoozed:' .. site, ms(until_ms), id)
redis.call('HSET', sk, 'status', 'snoozed', 'snooze_until', ms(until_ms))
redis.call('HDEL', sk, 'actor', 'lease_until')
audit(P, site, 'snoozed', id, actor, now, ARGV[5])
return {'ok', id, ms(until_ms)}
"""

# ARGV: 1 prefix 2 site 3 rate limit
REAP = PRELUDE + r"""
return {'ok', tostring(reap(ARGV[1], ARGV[2], now_ms(), tonumber(ARGV[3])))}
"""

# Test hook: the chain's hash function, so tests can compare it with hashlib. ARGV: 1 message
SHA256 = PRELUDE + r"""
return sha256(ARGV[1])
"""
