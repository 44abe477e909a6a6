-- Time a member has left in a room.
-- KEYS[1] the room; ARGV[1] member. Returns ms left, or -1 if not live.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = redis.call('ZSCORE', KEYS[1], ARGV[1])
if until_ms and tonumber(until_ms) > now then
  return tonumber(until_ms) - now
end
return -1
