-- Enqueue. ARGV: payload, delay ms, due at ms ('' : use the delay), max
-- attempts, backoff initial ms, backoff max ms, dedup id ('' : none), dedup
-- window ms, ready channel, queue name. Returns {1, id, was_empty} for a new job, {0,
-- id} for a duplicate.
if ARGV[7] ~= '' then
  local seen = redis.call('GET', P .. 'u:' .. ARGV[7])
  if seen then
    return {0, seen}
  end
end
local was_empty = redis.call('EXISTS', W, C, D) == 0 and 1 or 0
local id = string.format('%016x', redis.call('INCR', P .. 'seq'))
local due = now + tonumber(ARGV[2])
if ARGV[3] ~= '' then
  due = tonumber(ARGV[3])
end
redis.call('HSET', P .. 'j:' .. id, 'p', ARGV[1], 'e', now, 'm', ARGV[4],
  'bi', ARGV[5], 'bm', ARGV[6], 'a', 0)
redis.call('ZADD', W, due, id)
if ARGV[7] ~= '' then
  redis.call('SET', P .. 'u:' .. ARGV[7], id, 'PX', ARGV[8])
  redis.call('HSET', P .. 'j:' .. id, 'u', ARGV[7])
end
if due <= now then
  redis.call('PUBLISH', ARGV[9], ARGV[10])
end
return {1, id, was_empty}
