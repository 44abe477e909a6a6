-- Delete a cache entry.
-- KEYS[1] entry hash, ARGV[1] invalidation channel, ARGV[2] invalidation
-- message. Returns 1 when deleted.
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  return 1
end
return 0
