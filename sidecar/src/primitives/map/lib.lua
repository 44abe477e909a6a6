-- Shared by the map scripts (prepended to each).
-- KEYS[1] the fields: a hash of field -> '<version>:<expires>:<value>'
--         (expires: Redis time in ms, 0 for none)
-- KEYS[2] the field expiries: a sorted set of field -> expires
-- KEYS[3] the map's own state: a hash of v (its last version), ttl (ms)
--         and sl ('1': the lifetime slides)
-- ARGV[1] the map's channel. An event is '<kind> <version> <n>\n' and,
-- per change, '<op> <field bytes> <value bytes>\n<field><value>'; kinds:
-- u updated, x expired, d deleted; ops: s set, d deleted, x expired.
-- A field whose expiry has passed is absent to every script, reaped or
-- not; a map without fields does not exist.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function decode(raw)
  local a = string.find(raw, ':', 1, true)
  local b = string.find(raw, ':', a + 1, true)
  return tonumber(string.sub(raw, 1, a - 1)), tonumber(string.sub(raw, a + 1, b - 1)),
    string.sub(raw, b + 1)
end

local function encode(version, expires, value)
  return string.format('%d:%d:', version, expires) .. value
end

local function live(expires)
  return expires == 0 or expires > now
end

local function event(kind, version, changes)
  local parts = {string.format('%s %d %d\n', kind, version, #changes)}
  for _, c in ipairs(changes) do
    parts[#parts + 1] = string.format('%s %d %d\n', c[1], #c[2], #c[3]) .. c[2] .. c[3]
  end
  redis.call('PUBLISH', ARGV[1], table.concat(parts))
end

local function version()
  return tonumber(redis.call('HGET', KEYS[3], 'v') or '0')
end

-- Takes out, and announces in one event, up to `limit` expired fields.
local function reap(limit)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
  if #gone == 0 then
    return 0
  end
  local changes = {}
  for i, f in ipairs(gone) do
    redis.call('HDEL', KEYS[1], f)
    redis.call('ZREM', KEYS[2], f)
    changes[i] = {'x', f, ''}
  end
  event('x', version(), changes)
  return #gone
end

local function expire_all(ms)
  for i = 1, 3 do
    redis.call('PEXPIRE', KEYS[i], ms)
  end
end

-- A sliding map's lifetime restarts on every access.
local function touch()
  if redis.call('HGET', KEYS[3], 'sl') == '1' then
    expire_all(redis.call('HGET', KEYS[3], 'ttl'))
  end
end

-- After a write: a map without fields goes (its state with it); what
-- belongs to a map expires with it.
local function settle()
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2], KEYS[3])
    return
  end
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then
    redis.call('PEXPIRE', KEYS[2], pttl)
    redis.call('PEXPIRE', KEYS[3], pttl)
  end
end

-- The earliest expiry among the fields, or ''.
local function next_expiry()
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return first[2] or ''
end
