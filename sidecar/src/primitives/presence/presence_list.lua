-- One page of a room's live members.
-- KEYS[1] the room, KEYS[2] its metadata; ARGV[1] ZSCAN cursor, ARGV[2]
-- page size hint.
-- Returns {next cursor, member, metadata, ms left, member, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local scan = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local reply = {scan[1]}
local entries = scan[2]
for i = 1, #entries, 2 do
  local left = tonumber(entries[i + 1]) - now
  if left > 0 then
    reply[#reply + 1] = entries[i]
    reply[#reply + 1] = redis.call('HGET', KEYS[2], entries[i]) or ''
    reply[#reply + 1] = left
  end
end
return reply
