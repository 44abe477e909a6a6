-- Return a permit, and wake waiters everywhere.
-- KEYS[1] the permits; ARGV[1] token, ARGV[2] release channel, ARGV[3] message
-- Returns 1 when a live permit was returned, 0 otherwise.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not until_ms then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(until_ms) <= now then
  return 0
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
