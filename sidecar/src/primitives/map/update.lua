-- An atomic update of several fields: every change applies, or none.
-- ARGV[2] the map version required ('' for none; 0: the map must not exist)
-- ARGV[3] the map's lifetime: '' keep, 'f<ms>' fixed, 's<ms>' sliding,
--         'p' none
-- ARGV[4] most fields the map may hold, ARGV[5] the largest integer a
-- field holds, ARGV[6] most expired fields to reap first; then five per
-- change: op ('s' set, 'd' delete, 'i' add an integer, 'f' add a float),
-- field, value or amount, ttl ms (set; 0: none), condition ('' none, 'a'
-- absent, 'p' present, or a field version).
-- Returns {1, version, next expiry or '', outcome per change} (set: '',
-- delete: '1' if it existed, else '0'; increment: the new value) or
-- {0, current version, reason, change index}; reasons: version,
-- condition, nan, range, fields. Mirrors `plan` in memory.rs.
reap(tonumber(ARGV[6]))
-- A fixed lifetime survives an update that empties the map and fills it
-- again (the fields key is recreated without one).
local pttl = redis.call('PTTL', KEYS[1])
local count = redis.call('HLEN', KEYS[1])
local current = 0
if count > 0 then
  current = version()
end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
  return {0, current, 'version', 0}
end
local max = tonumber(ARGV[5])

local function number(s)
  if not s then
    return 0, true
  end
  if string.find(s, '^%-?%d+$') then
    local n = tonumber(s)
    if n and math.abs(n) <= max then
      return n, true
    end
    return nil
  end
  if string.find(s, '^%-?%d+%.?%d*$') or string.find(s, '^%-?%d+%.?%d*[eE][%-+]?%d+$') then
    local x = tonumber(s)
    if x and x == x and x ~= math.huge and x ~= -math.huge then
      return x, false
    end
  end
  return nil
end

local function float_text(x)
  for p = 15, 17 do
    local s = string.format('%.' .. p .. 'g', x)
    if tonumber(s) == x then
      return s
    end
  end
  return string.format('%.17g', x)
end

local staged, existed, order, outcomes = {}, {}, {}, {}
-- {value, expires, version} of a live field, as staged so far; false if absent.
local function current_of(f)
  if staged[f] ~= nil then
    return staged[f]
  end
  local raw = redis.call('HGET', KEYS[1], f)
  if not raw then
    return false
  end
  local ver, exp, val = decode(raw)
  if not live(exp) then
    return false
  end
  return {val, exp, ver}
end

local n = (#ARGV - 6) / 5
for i = 1, n do
  local base = 6 + (i - 1) * 5
  local op, f, arg = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local cur = current_of(f)
  if staged[f] == nil then
    order[#order + 1] = f
    existed[f] = cur ~= false
  end
  if op == 's' then
    local cond = ARGV[base + 5]
    local holds = true
    if cond == 'a' then
      holds = not cur
    elseif cond == 'p' then
      holds = cur ~= false
    elseif cond ~= '' then
      -- a field staged by this update has a version no caller knows yet
      holds = staged[f] == nil and cur ~= false and cur[3] == tonumber(cond)
    end
    if not holds then
      return {0, current, 'condition', i - 1}
    end
    local ttl = tonumber(ARGV[base + 4])
    local expires = 0
    if ttl > 0 then
      expires = now + ttl
    end
    staged[f] = {arg, expires}
    outcomes[i] = ''
  elseif op == 'd' then
    staged[f] = false
    outcomes[i] = cur and '1' or '0'
  else
    local value, integer = number(cur and cur[1] or nil)
    if value == nil then
      return {0, current, 'nan', i - 1}
    end
    local sum = value + tonumber(arg)
    local text
    if integer and op == 'i' then
      if math.abs(sum) > max then
        return {0, current, 'range', i - 1}
      end
      text = string.format('%d', sum)
    else
      if sum ~= sum or sum == math.huge or sum == -math.huge then
        return {0, current, 'range', i - 1}
      end
      text = float_text(sum)
    end
    staged[f] = {text, cur and cur[2] or 0}
    outcomes[i] = text
  end
end

for _, f in ipairs(order) do
  if existed[f] and not staged[f] then
    count = count - 1
  elseif staged[f] and not existed[f] then
    count = count + 1
  end
end
if count > tonumber(ARGV[4]) then
  return {0, current, 'fields', 0}
end

local v = math.max(version() + 1, now_us)
local changes = {}
for _, f in ipairs(order) do
  local s = staged[f]
  if s then
    redis.call('HSET', KEYS[1], f, encode(v, s[2], s[1]))
    if s[2] > 0 then
      redis.call('ZADD', KEYS[2], s[2], f)
    else
      redis.call('ZREM', KEYS[2], f)
    end
    changes[#changes + 1] = {'s', f, s[1]}
  else
    redis.call('HDEL', KEYS[1], f)
    redis.call('ZREM', KEYS[2], f)
    if existed[f] then
      changes[#changes + 1] = {'d', f, ''}
    end
  end
end
redis.call('HSET', KEYS[3], 'v', string.format('%d', v))
local lifetime = ARGV[3]
if lifetime == '' and pttl > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  expire_all(pttl)
end
if lifetime == 'p' then
  redis.call('HDEL', KEYS[3], 'ttl', 'sl')
  for i = 1, 3 do
    redis.call('PERSIST', KEYS[i])
  end
elseif lifetime ~= '' then
  local ms = string.sub(lifetime, 2)
  redis.call('HSET', KEYS[3], 'ttl', ms, 'sl', string.sub(lifetime, 1, 1) == 's' and '1' or '0')
  expire_all(ms)
end
touch()
settle()
if #changes > 0 then
  event('u', v, changes)
end
local reply = {1, v, next_expiry()}
for i = 1, n do
  reply[3 + i] = outcomes[i]
end
return reply
