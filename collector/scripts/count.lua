-- KEYS: the service's `i` key. ARGV: ttl, then per failure its pending member, event-time
-- minute, count name ('' where it is not counted) and tally entry ('' for none).
-- Ends each failure's claim. For each claim this call ended (one call does: whichever settler
-- gets here first), adds the failure to the service's per-minute counts under its count name,
-- which the deploy detector reads, and its tally entry to the service's `k` list, which a
-- serving process drains into its metrics. Returns 1 where this call ended the claim.
local base = string.sub(KEYS[1], 1, -2)
local ttl = tonumber(ARGV[1])
local out, counts, tallies = {}, {}, {}
for k = 1, (#ARGV - 1) / 4 do
  local j = 4 * (k - 1) + 2
  local ended = redis.call('ZREM', KEYS[1], ARGV[j])
  out[k] = ended
  if ended == 1 and ARGV[j + 2] ~= '' then
    local n = base .. 'n:' .. ARGV[j + 1]
    local field = 'c:' .. ARGV[j + 2]
    counts[n] = counts[n] or {}
    counts[n][field] = (counts[n][field] or 0) + 1
    if ARGV[j + 3] ~= '' then tallies[#tallies+1] = ARGV[j + 3] end
  end
end
for n, fields in pairs(counts) do
  for field, count in pairs(fields) do redis.call('HINCRBY', n, field, count) end
  redis.call('EXPIRE', n, ttl)
end
for i = 1, #tallies, 1000 do
  redis.call('RPUSH', base .. 'k', unpack(tallies, i, math.min(i + 999, #tallies)))
end
if #tallies > 0 then redis.call('EXPIRE', base .. 'k', ttl) end
return out
