-- Delete a cache entry if it (still) carries a tag.
-- KEYS[1] entry hash, ARGV[1] tag. Returns 1 when deleted.
if redis.call('HEXISTS', KEYS[1], 't:' .. ARGV[1]) == 1 then
  return redis.call('DEL', KEYS[1])
end
return 0
