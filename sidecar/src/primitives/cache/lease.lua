-- One look for GetOrLease.
-- KEYS[1] entry hash, KEYS[2] its stale copy, KEYS[3] its lease.
-- ARGV[1] lease in ms.
-- Returns {'hit', value, version, pttl}, or {'lease', stale value, stale
-- version} when this caller gets the lease, or {'held', stale value, stale
-- version, lease pttl} when another caller has it (stale fields are false
-- when there is no stale copy).
local r = redis.call('HMGET', KEYS[1], 'v', 'ver')
if r[1] then
  return {'hit', r[1], r[2], redis.call('PTTL', KEYS[1])}
end
local s = redis.call('HMGET', KEYS[2], 'v', 'ver')
if redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[1]) then
  return {'lease', s[1], s[2]}
end
return {'held', s[1], s[2], redis.call('PTTL', KEYS[3])}
