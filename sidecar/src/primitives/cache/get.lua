-- Read of one cache entry, optionally restarting its TTL.
-- KEYS[1] entry hash
-- ARGV[1] '1' to refresh the TTL from the TTL the entry was written with.
-- Returns nil, or {value, version, pttl (-1 = no expiry), tags...}; tags
-- only when refreshed (the caller extends their index entries).
local r = redis.call('HMGET', KEYS[1], 'v', 'ver', 'ttl')
if not r[1] then
  return nil
end
local reply = {r[1], r[2]}
local ttl = tonumber(r[3])
if ARGV[1] == '1' and ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  reply[3] = ttl
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 2) == 't:' then
      reply[#reply + 1] = string.sub(field, 3)
    end
  end
else
  reply[3] = redis.call('PTTL', KEYS[1])
end
return reply
