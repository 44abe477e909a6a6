-- Counter read: KEYS[1] the counter. Returns {exists (1/0), value, pttl}.
local value = redis.call('GET', KEYS[1])
if not value then
  return {0, 0, -2}
end
return {1, tonumber(value), redis.call('PTTL', KEYS[1])}
