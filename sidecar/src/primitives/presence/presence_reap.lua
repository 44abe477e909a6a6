-- Take out members whose TTL ran out, announcing each once.
-- KEYS[1] the room, KEYS[2] its metadata; ARGV[1] channel, ARGV[2] most to
-- take in one call.
-- Atomic: of every sidecar reaping this room, exactly one takes out (and
-- announces) a given expiry. Returns how many were taken out.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(gone) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
  redis.call('PUBLISH', ARGV[1], 'timeout\n' .. member .. '\n')
end
return #gone
