-- KEYS: the service's `i` key, then the `e` key of each failure. ARGV: ttl, then per failure
-- request_id, decision, pending member, '1' where the resource's record was gone (its key may
-- be too: HSETNX would create it without a TTL), event-time minute and count name (its cause
-- as the deploy detector tells causes apart) and tally entry. Sets each decision unless one
-- exists, ends the lease, and adds each decision it set (for a record still there) to the
-- service's per-minute counts, which the deploy detector reads, and its tally entry to the
-- service's `k` list, which a serving process drains into its metrics.
-- Returns 1 where this call set the decision.
local base = string.sub(KEYS[1], 1, -2)
local ttl = tonumber(ARGV[1])
local out, done, counts, tallies = {}, {}, {}, {}
for k = 2, #KEYS do
  local j = 7 * (k - 2) + 1
  out[k - 1] = redis.call('HSETNX', KEYS[k], 'c:' .. ARGV[j + 1], ARGV[j + 2])
  if ARGV[j + 4] == '1' then
    redis.call('EXPIRE', KEYS[k], ttl)
  elseif out[k - 1] == 1 then
    local n = base .. 'n:' .. ARGV[j + 5]
    local field = 'c:' .. ARGV[j + 6]
    counts[n] = counts[n] or {}
    counts[n][field] = (counts[n][field] or 0) + 1
    if ARGV[j + 7] ~= '' then tallies[#tallies+1] = ARGV[j + 7] end
  end
  done[#done+1] = ARGV[j + 3]
end
for i = 1, #done, 1000 do
  redis.call('ZREM', KEYS[1], unpack(done, i, math.min(i + 999, #done)))
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
