-- Settle a claim. ARGV: id, receipt, op ('ack', 'nack', 'extend'), nack
-- delay ms ('' : the backoff), nack error ('' : none, else '=' .. text),
-- extend ms, ready channel, queue name. Returns {'acked'}, {'retrying',
-- due}, {'dead'}, {'extended', visible_at}, {'stale'} or {'unknown'}.
local id = ARGV[1]
local job = P .. 'j:' .. id
local why = current(id, ARGV[2])
if why then
  return {why}
end
local op = ARGV[3]
if op == 'ack' then
  redis.call('ZREM', C, id)
  redis.call('DEL', job)
  return {'acked'}
end
if op == 'extend' then
  local v = now + tonumber(ARGV[6])
  redis.call('ZADD', C, v, id)
  redis.call('HSET', job, 'v', v)
  return {'extended', v}
end
redis.call('ZREM', C, id)
redis.call('HDEL', job, 'r', 'v')
if ARGV[5] == '' then
  redis.call('HDEL', job, 'x')
else
  redis.call('HSET', job, 'x', string.sub(ARGV[5], 2))
end
local f = redis.call('HMGET', job, 'a', 'm', 'bi', 'bm')
local a, m = tonumber(f[1]), tonumber(f[2])
if a >= m then
  redis.call('HSET', job, 't', now)
  redis.call('ZADD', D, 0, id)
  return {'dead'}
end
local wait
if ARGV[4] ~= '' then
  wait = tonumber(ARGV[4])
else
  wait = math.min(tonumber(f[3]) * 2 ^ math.min(a - 1, 31), tonumber(f[4]))
end
local due = now + wait
redis.call('ZADD', W, due, id)
if wait == 0 then
  redis.call('PUBLISH', ARGV[7], ARGV[8])
end
return {'retrying', due}
