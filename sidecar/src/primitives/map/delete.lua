-- Deletes the map. Returns 1 if it existed.
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
  return 0
end
local v = version()
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
event('d', v, {})
return 1
