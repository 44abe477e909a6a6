-- One attempt at a lock.
-- KEYS[1] the lock (value: the holder's token, PX lease)
-- KEYS[2] its last fence: never expires
-- ARGV[1] token, ARGV[2] lease in ms
-- Returns {1, fence} when acquired, {0, holder's remaining ms} otherwise.
--
-- Fences are max(last + 1, Redis time in microseconds), the rule cache and
-- map versions follow too: strictly increasing per lock while the counter
-- lives, and still increasing when it is lost (Redis restarted empty, the
-- key flushed or evicted, a failover to a replica without the last one),
-- because the clock has moved past every fence handed out. That rests on
-- the Redis hosts' clocks: never set back by more than the time between
-- two acquisitions. Exact in a double (< 2^53) until the year 2255.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[2]) or '0')
  if last >= fence then
    fence = last + 1
  end
  redis.call('SET', KEYS[2], string.format('%d', fence))
  return {1, fence}
end
return {0, redis.call('PTTL', KEYS[1])}
