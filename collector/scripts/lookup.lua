-- KEYS: the service's `p` key. ARGV: index (`q` or `x`), newest bucket, oldest bucket, names
-- blob (RS between names). Returns the newest value of each name (false where none), searching
-- buckets newest first and stopping once every name is found.
local base = string.sub(KEYS[1], 1, -2)
local names = split(ARGV[4], RS)
local found, missing = {}, #names
for bucket = tonumber(ARGV[2]), tonumber(ARGV[3]), -1 do
  if missing == 0 then break end
  local key = base .. ARGV[1] .. ':' .. bucket
  if redis.call('EXISTS', key) == 1 then
    local values = redis.call('HMGET', key, unpack(names))
    for i = 1, #names do
      if not found[i] and values[i] then
        found[i] = values[i]
        missing = missing - 1
      end
    end
  end
end
local out = {}
for i = 1, #names do out[i] = found[i] or false end
return out
