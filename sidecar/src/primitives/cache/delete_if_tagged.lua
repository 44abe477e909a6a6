-- Delete a cache entry and its stale copy if either (still) carries a tag.
-- KEYS[1] entry hash, KEYS[2] its stale copy; ARGV[1] tag, ARGV[2]
-- invalidation channel, ARGV[3] invalidation message. Returns 1 when the
-- entry was deleted.
local field = 't:' .. ARGV[1]
local entry = redis.call('HEXISTS', KEYS[1], field)
local copy = redis.call('HEXISTS', KEYS[2], field)
if entry == 1 or copy == 1 then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return entry
