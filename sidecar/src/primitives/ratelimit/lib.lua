-- Shared by the rate-limit scripts (prepended to each): the decisions, on
-- Redis' clock. Each returns {allowed, remaining, reset_after µs,
-- retry_after µs (-1 = none)} and, unless `peek`, takes an allowed cost.
-- They mirror `gcra`, `sliding_window` and `fixed_window` in memory.rs.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- GCRA (token bucket): `key` holds the theoretical arrival time (TAT), µs;
-- `interval` is period / limit in µs.
local function gcra(key, interval, burst, cost, peek)
  local eps = 0.5
  local tolerance = interval * burst
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then
    tat = now
  end
  local new_tat = tat + cost * interval
  local ahead = new_tat - now
  if ahead > tolerance + eps then
    local remaining = math.max(0, math.floor((tolerance - (tat - now)) / interval + eps / interval))
    return {0, remaining, math.ceil(tat - now), math.ceil(ahead - tolerance)}
  end
  if not peek then
    redis.call('SET', key, string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(ahead / 1000)))
  end
  local remaining = math.max(0, math.floor((tolerance - ahead) / interval + eps / interval))
  return {1, remaining, math.ceil(ahead), -1}
end

-- Sliding-window or fixed-window (`mode`): `key` is a hash of w (window
-- index), cur (count in window w) and prev (count in window w - 1).
local function window(key, period, max, cost, mode, peek)
  local index = math.floor(now / period)
  local left = period - (now - index * period)
  local prev, cur = 0, 0
  local h = redis.call('HMGET', key, 'w', 'cur', 'prev')
  if h[1] then
    local d = index - tonumber(h[1])
    if d == 0 then
      cur, prev = tonumber(h[2]), tonumber(h[3])
    elseif d == 1 then
      prev = tonumber(h[2])
    end
  end

  local allowed, remaining, reset, retry
  if mode == 'sliding' then
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
  if not peek then
    redis.call('HSET', key, 'w', string.format('%d', index), 'cur', cur, 'prev', prev)
    redis.call('PEXPIRE', key, math.max(1, math.ceil((left + period) / 1000)))
  end
  if retry >= 0 then
    retry = math.ceil(retry)
  end
  return {allowed, math.max(0, remaining), math.ceil(math.max(0, reset)), retry}
end
