-- KEYS: the `e` key of each failure's resource. ARGV: window_s, writes_limit, conflict_limit,
-- span_limit, skew_s, then per failure request_id, ts, client and its If-Match needles: '' (no tag:
-- nothing to look up), 'a' (every sighting) or 'n' followed by opaque tags (RS before each).
-- Per failure: {record or '', decision or '', sightings, conflicts}. Walking the timeline's
-- lineage members (w, d, f) newest first from the failure's time, `sightings` keeps the writes
-- stamped up to `skew_s` after it (another instance's clock may put the write the failure saw
-- there), those
-- containing a needle with the sighting just after each, and the newest `span_limit` back to
-- the newest write (member, score pairs): all the classifier reads of the lineage. The walk
-- stops once each needle was found whole, as an ETag (`"x"` or `W/"x"`) or in a write's
-- If-Match, and the span is read, or after `writes_limit` writes: older sightings cannot be
-- the newest of that tag. `conflicts` are the client's own 412/409s with If-Match among the
-- newest `conflict_limit` of the resource's in the window before the failure: what a blind
-- retry can be.
local window, wlimit, climit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local slimit, skew = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
for k = 1, #KEYS do
  local e = KEYS[k]
  local z = string.sub(e, 1, -2) .. 'z'
  local j = 4 * k + 2
  local rid, ts, client, needles = ARGV[j], ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  local values = redis.call('HMGET', e, rid, 'c:' .. rid)
  local kept, conflicts = {}, {}
  if client ~= '' and needles ~= '' then
    local f = string.sub(e, 1, -2) .. 'f'
    local since = tostring(tonumber(ts) - window)
    local mine = US .. client .. US
    -- without scores: only the few members kept need theirs
    local window_members = redis.call('ZREVRANGEBYSCORE', f, ts, since, 'LIMIT', 0, climit)
    for _, member in ipairs(window_members) do
      if string.find(member, mine, 1, true) then
        conflicts[#conflicts+1] = member; conflicts[#conflicts+1] = redis.call('ZSCORE', f, member)
      end
    end
  end
  local mode = string.sub(needles, 1, 1)
  local wanted, left = {}, 0
  if mode == 'n' then
    for _, needle in ipairs(split(string.sub(needles, 3), RS)) do
      wanted[needle] = true; left = left + 1
    end
  end
  local added, order = {}, {}
  local function keep(member)
    if not added[member] then added[member] = true; order[#order+1] = member end
  end
  local writes, walked, prev, offset, size = 0, 0, nil, 0, 16
  local in_span = true
  local walking = mode ~= ''
  if walking then
    -- writes stamped a little after the failure: one the failure saw may be among them
    local ahead = '(' .. ts
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', z, ahead, tonumber(ts) + skew)) do
      if string.sub(member, 1, 1) == 'w' then keep(member) end
    end
  end
  while walking do
    -- most If-Match tags are among the newest sightings: read a little first, more if needed
    local chunk = redis.call('ZREVRANGEBYSCORE', z, ts, '-inf', 'LIMIT', offset, size)
    for _, member in ipairs(chunk) do
      local kind = string.sub(member, 1, 1)
      if kind ~= 'o' then
        walked = walked + 1
        if in_span then
          keep(member)
          if kind ~= 'f' or walked >= slimit then in_span = false end
        end
        local match = mode == 'a'
        local fields = nil
        for needle, _ in pairs(wanted) do
          if string.find(member, needle, 3, true) then
            match = true
            fields = fields or split(member, US)
            local etag, quoted = fields[3], '"' .. needle .. '"'
            local superseded = kind ~= 'f' and string.find(fields[5] or '', quoted, 1, true)
            if etag == quoted or etag == 'W/' .. quoted or superseded then
              wanted[needle] = nil; left = left - 1
            end
          end
        end
        if match then
          -- the newer neighbour is what came after this sighting: the classifier needs it too
          if prev then keep(prev) end
          keep(member)
        end
        prev = member
        if kind ~= 'f' then writes = writes + 1 end
        if writes >= wlimit or walked >= 4 * wlimit
            or (mode == 'n' and left == 0 and not in_span) then
          walking = false
          break
        end
      end
    end
    if #chunk < size then break end
    offset = offset + size
    size = math.min(size * 4, 256)
  end
  local scored = {}
  for _, member in ipairs(order) do
    scored[#scored+1] = member; scored[#scored+1] = redis.call('ZSCORE', z, member)
  end
  out[k] = {values[1] or '', values[2] or '', scored, conflicts}
end
return out
