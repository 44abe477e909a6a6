-- Move up to ARGV[1] dead jobs, in id order, back to ready with fresh
-- attempts. ARGV[2] ready channel, ARGV[3] queue name. Returns how many.
local ids = redis.call('ZRANGEBYLEX', D, '-', '+', 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', D, id)
  redis.call('HSET', P .. 'j:' .. id, 'a', 0)
  redis.call('HDEL', P .. 'j:' .. id, 't')
  redis.call('ZADD', W, now, id)
end
if #ids > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return #ids
