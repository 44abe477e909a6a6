-- Move a schedule's last tick forward. KEYS[1] the schedule; ARGV[1] the
-- anchor it must still have (not replaced since), ARGV[2] the tick.
-- Returns 1 when it moved.
if redis.call('HGET', KEYS[1], 'a') ~= ARGV[1] then
  return 0
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
if tonumber(ARGV[2]) > last then
  redis.call('HSET', KEYS[1], 'last', ARGV[2])
  return 1
end
return 0
