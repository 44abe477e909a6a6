-- Shared by the durable-channel scripts (prepended to each): the channel's
-- epoch, the span of its history that runs on without a gap.
-- KEYS[1] the stream: each entry h (headers), p (payload) and b (the
--         offset written before it, so a reader can tell what is gone)
-- KEYS[2] the epoch: a hash of s (its start: every message of the epoch
--         has an offset at least s), r (the replication id of the server
--         that started it) and l (the last offset written)
-- An epoch ends when its history can no longer be trusted to run on from
-- what subscribers saw: the hash is gone (the channel expired, was never
-- written, or Redis lost its data) or the server is not the one that
-- started it (a replica promoted after a failover may lack the last
-- writes, and nothing says which).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Offsets 'ms-seq' compare as numbers; these may not fit a double.
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return string.sub(id, 1, dash - 1), string.sub(id, dash + 1)
end

local function less(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  if am ~= bm then
    return #am < #bm or (#am == #bm and am < bm)
  end
  return #as < #bs or (#as == #bs and as < bs)
end

-- The offset right before `id` (an epoch's start is never 0-0).
local function before(id)
  local ms, seq = split(id)
  if seq == '0' then
    return string.format('%.0f-18446744073709551615', tonumber(ms) - 1)
  end
  return ms .. '-' .. string.format('%.0f', tonumber(seq) - 1)
end

-- 'unknown' when the user may not run INFO (an ACL without +info): then
-- a failover goes unnoticed, and the sidecar warns.
local function replication_id()
  local info = redis.pcall('INFO', 'replication')
  if type(info) ~= 'string' then
    return 'unknown'
  end
  return string.match(info, 'master_replid:(%x+)') or 'unknown'
end

local function token(s, r)
  if r == 'unknown' then
    return s .. '@unknown'
  end
  return s .. '@' .. string.sub(r, 1, 8)
end

-- Starts a new epoch after `last`, the last offset written.
local function restart(last, r)
  local s = now .. '-0'
  if not less(last, s) then
    local ms, seq = split(last)
    s = ms .. '-' .. string.format('%.0f', tonumber(seq) + 1)
  end
  redis.call('HSET', KEYS[2], 's', s, 'r', r, 'l', last)
  return s
end

-- The channel's epoch: its token, start and last offset written, started
-- afresh when the old one ends. With `create` false, nil for a channel
-- that does not exist. A new epoch's hash lives as long as the stream, or
-- `idle` ms without one.
local function epoch(create, idle)
  local r = replication_id()
  local e = redis.call('HMGET', KEYS[2], 's', 'r', 'l')
  if e[1] and e[2] == r then
    return token(e[1], r), e[1], e[3]
  end
  local last = e[3]
  if not e[1] then
    local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
    if not newest and not create then
      return nil
    end
    last = newest and newest[1] or '0-0'
  end
  local s = restart(last, r)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  elseif ttl == -2 and idle > 0 then
    redis.call('PEXPIRE', KEYS[2], idle)
  end
  return token(s, r), s, last
end
