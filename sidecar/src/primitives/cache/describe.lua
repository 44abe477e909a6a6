-- What an operator sees of one cache entry: all but its value.
-- KEYS[1] entry hash
-- Returns nil, or {version, pttl (-1 = no expiry), value bytes, tags...}.
local version = redis.call('HGET', KEYS[1], 'ver')
if not version then
  return nil
end
local reply = {version, redis.call('PTTL', KEYS[1]), redis.call('HSTRLEN', KEYS[1], 'v')}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 2) == 't:' then
    reply[#reply + 1] = string.sub(field, 3)
  end
end
return reply
