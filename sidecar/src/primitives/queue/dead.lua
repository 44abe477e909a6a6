-- Dead jobs by id after ARGV[1] ('' : from the first), up to ARGV[2].
-- Returns, per job: id, payload, attempts, error ('' : none, else '=' ..
-- text), enqueued at, died at.
local from = '-'
if ARGV[1] ~= '' then
  from = '(' .. ARGV[1]
end
local ids = redis.call('ZRANGEBYLEX', D, from, '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', P .. 'j:' .. id, 'p', 'a', 'x', 'e', 't')
  out[#out + 1] = id
  out[#out + 1] = f[1]
  out[#out + 1] = tonumber(f[2])
  out[#out + 1] = f[3] and ('=' .. f[3]) or ''
  out[#out + 1] = tonumber(f[4])
  out[#out + 1] = tonumber(f[5])
end
return out
