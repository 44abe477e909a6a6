-- Fields of a map. ARGV[2..] the fields.
-- Returns {version, the map's PTTL, then value, version, ttl ms (-1:
-- none) per field}, false for the three of an absent field.
touch()
local reply = {0, redis.call('PTTL', KEYS[1])}
if redis.call('EXISTS', KEYS[1]) == 1 then
  reply[1] = version()
end
for i = 2, #ARGV do
  local raw = redis.call('HGET', KEYS[1], ARGV[i])
  local ver, exp, val
  if raw then
    ver, exp, val = decode(raw)
  end
  if raw and live(exp) then
    reply[#reply + 1] = val
    reply[#reply + 1] = ver
    reply[#reply + 1] = exp == 0 and -1 or exp - now
  else
    reply[#reply + 1] = false
    reply[#reply + 1] = false
    reply[#reply + 1] = false
  end
end
return reply
