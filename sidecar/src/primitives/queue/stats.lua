-- Returns {ready, delayed, in flight, dead, oldest ready age ms (-1: none)}.
local ready = redis.call('ZCOUNT', W, '-inf', now)
local first = redis.call('ZRANGE', W, 0, 0, 'WITHSCORES')
local oldest = -1
if first[2] and tonumber(first[2]) <= now then
  oldest = now - tonumber(first[2])
end
return {ready, redis.call('ZCARD', W) - ready, redis.call('ZCARD', C), redis.call('ZCARD', D), oldest}
