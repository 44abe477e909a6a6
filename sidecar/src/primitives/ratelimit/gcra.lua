-- GCRA (token bucket) decision, in one round trip, on Redis' clock.
-- KEYS[1] the theoretical arrival time (TAT), µs
-- ARGV[1] emission interval in µs (period / limit), ARGV[2] burst,
-- ARGV[3] cost, ARGV[4] '1' to peek (decide, take nothing)
-- Returns {allowed, remaining, reset_after µs, retry_after µs (-1 = none)}.
-- Mirrors `gcra` in memory.rs.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local eps = 0.5
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local new_tat = tat + cost * interval
local ahead = new_tat - now
if ahead > tolerance + eps then
  local remaining = math.max(0, math.floor((tolerance - (tat - now)) / interval + eps / interval))
  return {0, remaining, math.ceil(tat - now), math.ceil(ahead - tolerance)}
end
if ARGV[4] ~= '1' then
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(ahead / 1000)))
end
local remaining = math.max(0, math.floor((tolerance - ahead) / interval + eps / interval))
return {1, remaining, math.ceil(ahead), -1}
