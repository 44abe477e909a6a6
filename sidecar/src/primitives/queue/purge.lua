-- Delete up to ARGV[1] dead jobs; returns how many (the caller repeats
-- until 0, so no one call blocks Redis for long).
local ids = redis.call('ZRANGEBYLEX', D, '-', '+', 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', D, id)
  redis.call('DEL', P .. 'j:' .. id)
end
return #ids
