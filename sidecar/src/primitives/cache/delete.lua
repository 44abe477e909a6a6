-- Delete a cache entry and its stale copy.
-- KEYS[1] entry hash, KEYS[2] its stale copy; ARGV[1] invalidation channel,
-- ARGV[2] invalidation message. Returns 1 when the entry existed.
local existed = redis.call('DEL', KEYS[1])
if redis.call('DEL', KEYS[2]) == 1 or existed == 1 then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return existed
