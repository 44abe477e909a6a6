-- One page of a map's fields. ARGV[2] the HSCAN cursor, ARGV[3] the last
-- field returned from that cursor's batch ('' for none), ARGV[4] the page
-- size. Each batch is taken in field order, so a page can end inside one.
-- Returns {next HSCAN cursor, next last field, version, the map's PTTL,
-- then field, value, version, ttl ms (-1: none) per field}; the next
-- cursor is '' when the listing is done.
touch()
local limit = tonumber(ARGV[4])
local reply = {'', '', 0, redis.call('PTTL', KEYS[1])}
if redis.call('EXISTS', KEYS[1]) == 0 then
  return reply
end
reply[3] = version()
local cursor, after, n = ARGV[2], ARGV[3], 0
repeat
  local scanned = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', limit)
  local batch = {}
  for i = 1, #scanned[2], 2 do
    local f = scanned[2][i]
    if after == '' or f > after then
      batch[#batch + 1] = {f, scanned[2][i + 1]}
    end
  end
  table.sort(batch, function(a, b) return a[1] < b[1] end)
  for _, entry in ipairs(batch) do
    local ver, exp, val = decode(entry[2])
    if live(exp) then
      if n == limit then
        reply[1], reply[2] = cursor, after
        return reply
      end
      reply[#reply + 1] = entry[1]
      reply[#reply + 1] = val
      reply[#reply + 1] = ver
      reply[#reply + 1] = exp == 0 and -1 or exp - now
      n = n + 1
      after = entry[1]
    end
  end
  cursor, after = scanned[1], ''
until cursor == '0'
return reply
