-- KEYS: the `e` key of each resource a batch touched. ARGV: timeline_cap.
-- Cuts each timeline (and its records, index flags and decisions) and conflicts set to the
-- cap.
local US = string.char(31)
local tcap = tonumber(ARGV[1])
for r = 1, #KEYS do
  local e = KEYS[r]
  local z, f = string.sub(e, 1, -2) .. 'z', string.sub(e, 1, -2) .. 'f'
  redis.call('ZREMRANGEBYRANK', f, 0, -(tcap + 1))
  local extra = redis.call('ZCARD', z) - tcap
  while extra > 0 do
    local chunk = math.min(extra, 1000)
    local old = redis.call('ZRANGE', z, 0, chunk - 1)
    redis.call('ZREMRANGEBYRANK', z, 0, chunk - 1)
    local gone = {}
    for _, member in ipairs(old) do
      local rid = string.match(member, '^.' .. US .. '([^' .. US .. ']*)')
      gone[#gone+1] = rid; gone[#gone+1] = 'c:' .. rid; gone[#gone+1] = '+' .. rid
    end
    redis.call('HDEL', e, unpack(gone))
    extra = extra - chunk
  end
end
return 1
