-- Ack ARGV[4], ARGV[6], ... (job ids) by receipts ARGV[5], ARGV[7], ...,
-- all or none, then claim up to ARGV[1] due jobs for ARGV[2] ms; ARGV[3] is
-- this call's random receipt part. Returns {'refused', id, 'stale' or
-- 'unknown'} when an ack cannot be made (then nothing is acked or
-- claimed), else {visible_at, next_in, then per job: id, payload, attempt,
-- max attempts, enqueued at, dedup id ('' : none)}; next_in (-1: nothing
-- pending; set only when nothing was claimed) is how long until the next
-- job is due or the next claim runs out, for a waiting claim to sleep.
for i = 4, #ARGV, 2 do
  local why = current(ARGV[i], ARGV[i + 1])
  if why then
    return {'refused', ARGV[i], why}
  end
end
for i = 4, #ARGV, 2 do
  redis.call('ZREM', C, ARGV[i])
  redis.call('DEL', P .. 'j:' .. ARGV[i])
end
local visible_at = now + tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', W, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {visible_at, -1}
for _, id in ipairs(ids) do
  local job = P .. 'j:' .. id
  local a = redis.call('HINCRBY', job, 'a', 1)
  redis.call('HSET', job, 'r', id .. '.' .. a .. '.' .. ARGV[3], 'v', visible_at)
  redis.call('ZREM', W, id)
  redis.call('ZADD', C, visible_at, id)
  local f = redis.call('HMGET', job, 'p', 'm', 'e', 'u')
  out[#out + 1] = id
  out[#out + 1] = f[1]
  out[#out + 1] = a
  out[#out + 1] = tonumber(f[2])
  out[#out + 1] = tonumber(f[3])
  out[#out + 1] = f[4] or ''
end
if #ids == 0 then
  local wake = -1
  for _, set in ipairs({W, C}) do
    local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
    if first[2] and (wake < 0 or tonumber(first[2]) < wake) then
      wake = tonumber(first[2])
    end
  end
  if wake >= 0 then
    out[2] = math.max(wake - now, 0)
  end
end
return out
