-- Shared by every queue script (prepended). KEYS[1] is the queue's key
-- prefix `ns:q:{queue}:`; every key derives from it, so one queue lives in
-- one hash slot. Keys: `w` (waiting: score due ms, member id), `c` (claimed:
-- score when the claim runs out), `d` (dead: score 0, by id), `j:<id>` (the
-- job: p payload, e enqueued, m max attempts, bi/bm backoff ms, a attempts,
-- r receipt, v claim end, x error, t died, u dedup id), `u:<dedup id>`,
-- `seq`.
-- Times are Redis' own clock (TIME), so sidecars agree on what is due.
local P = KEYS[1]
local W, C, D = P .. 'w', P .. 'c', P .. 'd'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Ends the claim of `id`, which ran out at `at`: due again from then, or
-- dead once its attempts are spent.
local function expire_one(id, at)
  local job = P .. 'j:' .. id
  redis.call('ZREM', C, id)
  redis.call('HDEL', job, 'r', 'v')
  local a = tonumber(redis.call('HGET', job, 'a'))
  local m = tonumber(redis.call('HGET', job, 'm'))
  if a >= m then
    redis.call('HSET', job, 'x', 'the claim ran out without an ack', 't', at)
    redis.call('ZADD', D, 0, id)
  else
    redis.call('ZADD', W, at, id)
  end
end

-- Nil if `receipt` is job `id`'s current claim's, else why not: 'stale'
-- (an earlier claim's, or the claim ran out: ended here if the batch
-- below has not yet) or 'unknown' (no such job).
local function current(id, receipt)
  local job = P .. 'j:' .. id
  local f = redis.call('HMGET', job, 'r', 'v')
  local v = tonumber(f[2])
  if v and v <= now then
    expire_one(id, v)
    return 'stale'
  end
  if f[1] == receipt then
    return nil
  end
  if f[1] == false and redis.call('EXISTS', job) == 0 then
    return 'unknown'
  end
  return 'stale'
end

-- Ends the claims that ran out by now, a bounded batch per call.
local function expire()
  local out = redis.call('ZRANGEBYSCORE', C, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 256)
  for i = 1, #out, 2 do
    expire_one(out[i], tonumber(out[i + 1]))
  end
end
expire()
