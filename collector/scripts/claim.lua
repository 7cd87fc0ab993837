-- KEYS: p. ARGV: now_ms, lateness_s, idle_s, lease_ms, limit, force, ttl, stuck_ms.
-- Moves failures the watermark has passed from pending to in-flight, and re-leases in-flight
-- ones whose settler vanished (and, when forced, stuck ones). Returns members, due ones first,
-- then re-leased ones.
local base = string.sub(KEYS[1], 1, -2)
local p, m, i = KEYS[1], base .. 'm', base .. 'i'
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[5])
local lease_until = now + tonumber(ARGV[4])
local out = {}
local newest = redis.call('ZSCORE', m, 'max')
if newest then
  local bound = tostring(tonumber(newest) - tonumber(ARGV[2]))
  local seen = tonumber(redis.call('ZSCORE', m, 'seen') or '0')
  if ARGV[6] == '1' or now - seen >= tonumber(ARGV[3]) * 1000 then bound = '+inf' end
  local due = redis.call('ZRANGEBYSCORE', p, '-inf', bound, 'LIMIT', 0, limit)
  for _, member in ipairs(due) do out[#out+1] = member end
end
-- forced (a flush), also those claimed more than stuck_ms ago: a claim is settled in
-- milliseconds, so its settler died with Redis or is gone, and deciding twice is harmless
-- (the first decision is kept, and counted once)
local lost_until = now
if ARGV[6] == '1' then lost_until = now + tonumber(ARGV[4]) - tonumber(ARGV[8]) end
local lost = redis.call('ZRANGEBYSCORE', i, '-inf', lost_until, 'LIMIT', 0, limit)
for _, member in ipairs(lost) do out[#out+1] = member end
-- one ZREM and one ZADD for the lot (chunks keep unpack() within its limit)
for start = 1, #out, 500 do
  local stop = math.min(start + 499, #out)
  local leases = {}
  for j = start, stop do leases[#leases+1] = lease_until; leases[#leases+1] = out[j] end
  redis.call('ZREM', p, unpack(out, start, stop))
  redis.call('ZADD', i, unpack(leases))
end
if #out > 0 then redis.call('EXPIRE', i, tonumber(ARGV[7])) end
return out
