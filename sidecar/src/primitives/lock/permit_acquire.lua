-- One attempt at a permit of a counting semaphore.
-- KEYS[1] the permits: a sorted set of tokens scored by lease expiry
-- (Redis time, ms)
-- ARGV[1] token, ARGV[2] limit, ARGV[3] lease in ms
-- Returns {1, 0} when acquired, {0, ms until the earliest lease ends}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  -- The set lives exactly as long as its longest lease.
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[1], last[2])
  return {1, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}
