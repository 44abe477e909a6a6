-- Counter increment: KEYS[1] the counter; ARGV: by, ttl_ms (0: none),
-- min and max ('' for none), the largest magnitude allowed.
-- Returns {applied (1/0), value (after, or unchanged), pttl}.
-- Values stay within +-(2^53 - 1), so Lua's doubles hold them exactly.
-- Mirrors `Increment::apply` in store.rs.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local by = tonumber(ARGV[1])
local next = current + by
local limit = tonumber(ARGV[5])
if next > limit or next < -limit
  or (ARGV[3] ~= '' and next < tonumber(ARGV[3]))
  or (ARGV[4] ~= '' and next > tonumber(ARGV[4])) then
  return {0, current, redis.call('PTTL', KEYS[1])}
end
local created = redis.call('EXISTS', KEYS[1]) == 0
redis.call('INCRBY', KEYS[1], ARGV[1])
if created and tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {1, next, redis.call('PTTL', KEYS[1])}
