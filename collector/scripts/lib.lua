local RS, US = string.char(30), string.char(31)
local function split(s, sep)
  -- gmatch walks the string in C; a find/sub loop in Lua costs several times more
  local out = {}
  if s == nil or s == '' then return out end
  for item in string.gmatch(s .. sep, '([^' .. sep .. ']*)' .. sep) do out[#out+1] = item end
  return out
end
