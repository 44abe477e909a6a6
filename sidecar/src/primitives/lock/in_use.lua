-- What an operator sees of a lock or semaphore in use; never a token.
-- KEYS[1] the lock (PX lease), or the semaphore's permits (a sorted set of
--         tokens scored by lease expiry, Redis time in ms)
-- KEYS[2] the lock's last fence (absent for a semaphore)
-- Returns false when nobody holds it, else {held, ms left, fence}: for a
-- semaphore, the permits held and the lease that ends first.
if KEYS[2] then
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl == -2 then
    return false
  end
  return {1, ttl, tonumber(redis.call('GET', KEYS[2]) or '0')}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local first = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if #first == 0 then
  return false
end
local held = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
return {held, tonumber(first[2]) - now, 0}
