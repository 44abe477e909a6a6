-- Sliding-window or fixed-window decision, in one round trip, on Redis'
-- clock.
-- KEYS[1] a hash: w (window index), cur (count in window w), prev (count
-- in window w - 1)
-- ARGV[1] period in µs, ARGV[2] limit, ARGV[3] cost, ARGV[4] 'sliding' or
-- 'fixed', ARGV[5] '1' to peek (decide, take nothing)
-- Returns {allowed, remaining, reset_after µs, retry_after µs (-1 = none)}.
-- Mirrors `sliding_window` and `fixed_window` in memory.rs.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local index = math.floor(now / period)
local left = period - (now - index * period)
local prev, cur = 0, 0
local h = redis.call('HMGET', KEYS[1], 'w', 'cur', 'prev')
if h[1] then
  local d = index - tonumber(h[1])
  if d == 0 then
    cur, prev = tonumber(h[2]), tonumber(h[3])
  elseif d == 1 then
    prev = tonumber(h[2])
  end
end

local allowed, remaining, reset, retry
if ARGV[4] == 'sliding' then
  local estimate = prev * left / period + cur
  if estimate + cost <= max + 1e-9 then
    allowed = 1
    remaining = math.floor(max - estimate - cost + 1e-9)
    reset = left
    if cur + cost > 0 then
      reset = left + period
    end
    retry = -1
  else
    allowed = 0
    remaining = math.floor(max - estimate + 1e-9)
    if cur + cost <= max then
      retry = left - (max - cur - cost) * period / prev
    else
      retry = left + math.max(0, period * (1 - (max - cost) / cur))
    end
    if cur > 0 then
      reset = left + period
    elseif prev > 0 then
      reset = left
    else
      reset = 0
    end
  end
else
  if cur + cost <= max then
    allowed, retry = 1, -1
  else
    allowed, retry = 0, left
  end
  local after = cur
  if allowed == 1 then
    after = cur + cost
  end
  remaining = max - after
  reset = 0
  if after > 0 then
    reset = left
  end
end

if allowed == 1 then
  cur = cur + cost
end
if ARGV[5] ~= '1' then
  redis.call('HSET', KEYS[1], 'w', string.format('%d', index), 'cur', cur, 'prev', prev)
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((left + period) / 1000)))
end
if retry >= 0 then
  retry = math.ceil(retry)
end
return {allowed, math.max(0, remaining), math.ceil(math.max(0, reset)), retry}
