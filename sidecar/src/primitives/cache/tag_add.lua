-- Index one key under one tag.
-- KEYS[1] the tag's index: a sorted set of keys scored by the time (Redis
-- ms) after which the entry can be forgotten.
-- ARGV[1] key, ARGV[2] the key's ttl in ms (0 = none).
--
-- Scores only grow (an entry outlives every TTL its key has had), expired
-- entries are pruned on every add, and the index itself expires with its
-- last entry, so keys that expire leave nothing behind.
local NEVER = 4503599627370496 -- 2^52 ms: far beyond any TTL
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now))
local ttl = tonumber(ARGV[2])
local score = NEVER
if ttl > 0 then
  -- A second of slack for the clocks of different Cluster nodes.
  score = now + ttl + 1000
end
redis.call('ZADD', KEYS[1], 'GT', score, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local until_ms = tonumber(last[2])
if until_ms >= NEVER then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', until_ms))
end
return 1
