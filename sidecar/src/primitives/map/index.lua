-- The index of maps with fields to reap, shared by every sidecar.
-- KEYS[1] a sorted set of map -> when it is due (Redis ms): never later
-- than its earliest field expiry; KEYS[2] a hash of map -> the token of
-- the reaper that claimed it. ARGV[1] the operation:
--   mark <map> <due>: a field of <map> expires at <due>.
--   claim <lease ms> <limit> <token>: the maps due now, claimed (their
--     due time pushed back by the lease) for this reaper.
--   settle <map> <token> <next due or ''>: after reaping a claimed map.
--     If nobody marked it since the claim, its due time becomes the next
--     (or it leaves the index); otherwise only an earlier time is taken.
local op = ARGV[1]
if op == 'mark' then
  redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[2])
  redis.call('HDEL', KEYS[2], ARGV[2])
  return 1
elseif op == 'claim' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
  for _, map in ipairs(due) do
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), map)
    redis.call('HSET', KEYS[2], map, ARGV[4])
  end
  return due
else
  local map, token, next = ARGV[2], ARGV[3], ARGV[4]
  if redis.call('HGET', KEYS[2], map) == token then
    redis.call('HDEL', KEYS[2], map)
    if next == '' then
      redis.call('ZREM', KEYS[1], map)
    else
      redis.call('ZADD', KEYS[1], next, map)
    end
  elseif next ~= '' then
    redis.call('ZADD', KEYS[1], 'LT', next, map)
  end
  return 1
end
