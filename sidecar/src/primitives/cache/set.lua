-- Conditional write of one cache entry.
-- KEYS[1] entry hash, KEYS[2] its stale copy, KEYS[3] its GetOrLease lease
-- ARGV[1] value, ARGV[2] ttl in ms (0 = none), ARGV[3] condition
-- ('none' | 'absent' | 'present' | 'version'), ARGV[4] expected version,
-- ARGV[5] invalidation channel, ARGV[6] invalidation message,
-- ARGV[7] stale window in ms (0 = none), ARGV[8..] tags.
-- Returns the new version, or -1 when the condition does not hold.
--
-- Versions are max(previous + 1, Redis time in microseconds): strictly
-- increasing per key, and not reused after a delete because the clock has
-- moved on. They fit a double exactly (< 2^53) until the year 2255.
local current = redis.call('HGET', KEYS[1], 'ver')
local condition = ARGV[3]
if (condition == 'absent' and current)
  or (condition == 'present' and not current)
  or (condition == 'version' and current ~= ARGV[4]) then
  return -1
end
local t = redis.call('TIME')
local version = tonumber(t[1]) * 1000000 + tonumber(t[2])
if current and tonumber(current) >= version then
  version = tonumber(current) + 1
end
local fields = {'v', ARGV[1], 'ver', string.format('%d', version), 'ttl', ARGV[2]}
for i = 8, #ARGV do
  fields[#fields + 1] = 't:' .. ARGV[i]
  fields[#fields + 1] = '1'
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
-- A value that may be served stale after it expires is copied (Redis
-- shares nothing between keys, so the copy costs the value's size).
local stale = tonumber(ARGV[7])
if ttl > 0 and stale > 0 then
  -- With its tags, so tag invalidation finds the copy too.
  redis.call('COPY', KEYS[1], KEYS[2], 'REPLACE')
  redis.call('PEXPIRE', KEYS[2], ttl + stale)
else
  redis.call('DEL', KEYS[2])
end
-- The key is filled: whoever held its lease is done.
redis.call('DEL', KEYS[3])
-- Near caches of every sidecar evict the key.
redis.call('PUBLISH', ARGV[5], ARGV[6])
return version
