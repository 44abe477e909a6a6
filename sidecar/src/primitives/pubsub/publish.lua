-- Publish a message: live, and when durable also appended to the channel's
-- capped stream first, in one step so the live copy and the stream agree
-- on order. With an idempotency key, a repeat within the window answers
-- the first publish's offset and delivers nothing.
-- The stream keeps at most ARGV[1] messages and, with a max age, none
-- older (by the Redis clock), and disappears that long after its last
-- publish.
-- KEYS[1] the stream; KEYS[2] the idempotency key (KEYS[1] when none)
-- ARGV[1] max length, ARGV[2] live channel, ARGV[3] headers (JSON),
-- ARGV[4] payload, ARGV[5] durable (1/0), ARGV[6] the idempotency window
-- in ms (0: no key), ARGV[7] the max age in ms (0: none)
-- Returns {offset or "", 1 for a repeat else 0}.
if ARGV[6] ~= '0' then
  local first = redis.call('GET', KEYS[2])
  if first then
    return {first, 1}
  end
end
local id = ''
if ARGV[5] == '1' then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'h', ARGV[3], 'p', ARGV[4])
  local age = tonumber(ARGV[7])
  if age > 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - age))
    redis.call('PEXPIRE', KEYS[1], age)
  end
end
redis.call('PUBLISH', ARGV[2], id .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
if ARGV[6] ~= '0' then
  redis.call('SET', KEYS[2], id, 'PX', ARGV[6])
end
return {id, 0}
