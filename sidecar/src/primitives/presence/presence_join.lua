-- Join a room, or heartbeat.
-- KEYS[1] the room: a sorted set of members scored by expiry (Redis ms)
-- KEYS[2] the members' metadata (hash)
-- ARGV[1] member, ARGV[2] metadata, ARGV[3] ttl ms, ARGV[4] event channel
-- Returns 1 when the member is new (and publishes a join), 0 for a
-- heartbeat. A member still listed, even past its TTL because no reaper
-- has run yet, is heartbeating: it stays, and no timeout will be announced.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local existed = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
-- The room outlives its last member long enough for reapers to announce
-- the timeout, then goes away by itself.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local until_ms = string.format('%d', tonumber(last[2]) + 600000)
redis.call('PEXPIREAT', KEYS[1], until_ms)
redis.call('PEXPIREAT', KEYS[2], until_ms)
if existed then
  return 0
end
redis.call('PUBLISH', ARGV[4], 'join\n' .. ARGV[1] .. '\n' .. ARGV[2])
return 1
