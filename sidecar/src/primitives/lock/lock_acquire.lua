-- One attempt at a lock.
-- KEYS[1] the lock (value: the holder's token, PX lease)
-- KEYS[2] its fence counter: never expires, so fences never go backwards
-- ARGV[1] token, ARGV[2] lease in ms
-- Returns {1, fence} when acquired, {0, holder's remaining ms} otherwise.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
