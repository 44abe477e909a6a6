-- Leave a room.
-- KEYS[1] the room, KEYS[2] its metadata; ARGV[1] member, ARGV[2] channel
-- Returns 1 (and publishes a leave) when the member was in the room.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[2], 'leave\n' .. ARGV[1] .. '\n')
  return 1
end
return 0
