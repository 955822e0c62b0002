"""The waveform write beside the add script: the signal of an alerting event, kept as long as its alert.

Run in the same pipeline as, and after, the add script of each of the event's
alerts: the add script has just written each candidate's idempotency key
(``{admission}|{target alert}``), so this script finds the alerts the event
landed in and copies their retention. An alert without a TTL keeps its
waveform without one; if alerts ever get a TTL, the waveform gets the longest
of its alerts'. A separate script so that the add script stays as it is.
"""

from __future__ import annotations

# KEYS: none (derived from the prefix, as in workers.triage_lua)
# ARGV: 1 prefix 2 event id 3 blob (schemas.waveform) 4.. the event's candidate alert ids
STORE_WAVEFORM = r"""
local P = ARGV[1]
local ttl = nil  -- nil: no alert of this event was admitted; -1: no expiry; else the longest PTTL in ms
for i = 4, #ARGV do
  local seen = redis.call('GET', P .. ':idem:' .. ARGV[i])
  if seen then
    local target = string.sub(seen, string.find(seen, '|', 1, true) + 1)
    local t = redis.call('PTTL', P .. ':alert:' .. target)
    if t == -1 then ttl = -1
    elseif t > 0 and ttl ~= -1 and (ttl == nil or t > ttl) then ttl = t end
  end
end
if ttl == nil then return 0 end
local key = P .. ':wave:' .. ARGV[2]
if ttl == -1 then redis.call('SET', key, ARGV[3]) else redis.call('SET', key, ARGV[3], 'PX', ttl) end
return 1
"""
