-- Delete a cache entry if it (still) carries a tag.
-- KEYS[1] entry hash, ARGV[1] tag, ARGV[2] invalidation channel, ARGV[3]
-- invalidation message. Returns 1 when deleted.
if redis.call('HEXISTS', KEYS[1], 't:' .. ARGV[1]) == 1 then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
