-- Publish a message: live, and when durable also appended to the channel's
-- capped stream first, in one step so the live copy and the stream agree
-- on order. With an idempotency key, a repeat within the window answers
-- the first publish's offset and delivers nothing.
-- The stream keeps at most ARGV[1] messages and, with a max age, none
-- older (by the Redis clock), and disappears, epoch and all, that long
-- after its last publish.
-- KEYS[1], KEYS[2] the stream and its epoch (epoch.lua); KEYS[3] the
-- idempotency key (KEYS[1] when none)
-- ARGV[1] max length, ARGV[2] live channel, ARGV[3] headers (JSON),
-- ARGV[4] payload, ARGV[5] durable (1/0), ARGV[6] the idempotency window
-- in ms (0: no key), ARGV[7] the max age in ms (0: none)
-- Returns {offset or "", 1 for a repeat else 0, epoch or ""}.
local durable = ARGV[5] == '1'
if ARGV[6] ~= '0' then
  local first = redis.call('GET', KEYS[3])
  if first then
    local e = ''
    if durable then
      e = epoch(false, 0) or ''
    end
    return {first, 1, e}
  end
end
local id, e = '', ''
if durable then
  local age = tonumber(ARGV[7])
  local _, last
  e, _, last = epoch(true, 0)
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'h', ARGV[3], 'p', ARGV[4], 'b', last)
  redis.call('HSET', KEYS[2], 'l', id)
  if age > 0 then
    redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - age))
    redis.call('PEXPIRE', KEYS[1], age)
    redis.call('PEXPIRE', KEYS[2], age)
  else
    redis.call('PERSIST', KEYS[2])
  end
end
redis.call('PUBLISH', ARGV[2], id .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
if ARGV[6] ~= '0' then
  redis.call('SET', KEYS[3], id, 'PX', ARGV[6])
end
return {id, 0, e}
