-- A page of a durable channel's history, and its epoch.
-- KEYS[1], KEYS[2] the stream and its epoch (epoch.lua)
-- ARGV[1] XRANGE or XREVRANGE, ARGV[2], ARGV[3] its bounds, ARGV[4] the
-- page size
-- Returns {epoch or "" for a channel that does not exist, entries}.
local e = epoch(false, 0)
if not e then
  return {'', {}}
end
return {e, redis.call(ARGV[1], KEYS[1], ARGV[2], ARGV[3], 'COUNT', ARGV[4])}
