-- The messages of a durable channel after a subscriber's offset, and
-- whether they follow on from it without a gap.
-- KEYS[1], KEYS[2] the stream and its epoch (epoch.lua)
-- ARGV[1] the subscriber's epoch ("" when it does not know it), ARGV[2]
-- its offset (0-0: it has nothing, and asks for the whole epoch), ARGV[3] the page size, ARGV[4] how long (ms) a new epoch of
-- a channel without a stream is kept
-- ARGV[5] the most payload bytes a page holds (past its first message):
-- a page is one reply, and must come back within the deadline
-- Returns {epoch, recovered (1/0), the offset the page comes after,
-- entries, 1 if more may follow}.
local at = ARGV[2]
local e, s, last = epoch(true, tonumber(ARGV[4]))
local recovered
if at == '0-0' then
  at = before(s)
  recovered = true
else
  recovered = (ARGV[1] == '' or ARGV[1] == e) and not less(at, s)
end
local after = at
if not recovered and less(before(s), at) then
  after = before(s) -- the whole epoch: the offset means nothing in it
end
local entries, more = {}, 0
if after ~= '18446744073709551615-18446744073709551615' then -- else nothing comes after it
  local count, budget, bytes = tonumber(ARGV[3]), tonumber(ARGV[5]), 0
  local from = '(' .. after
  while more == 0 and #entries < count do
    local batch = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', math.min(32, count - #entries))
    for _, entry in ipairs(batch) do
      entries[#entries + 1] = entry
      for i = 2, #entry[2], 2 do
        bytes = bytes + #entry[2][i]
      end
      if bytes >= budget then
        more = 1
        break
      end
    end
    if #batch == 0 then
      break
    end
    from = '(' .. batch[#batch][1]
  end
  if #entries >= count then
    more = 1
  end
end
if recovered then
  local first = entries[1]
  if first then
    -- The message written before the first one left: after the offset,
    -- and gone, the subscriber missed it (trimmed or expired).
    local b
    for i = 1, #first[2], 2 do
      if first[2][i] == 'b' then
        b = first[2][i + 1]
      end
    end
    recovered = b ~= nil and not less(at, b)
  else
    -- Nothing after the offset: fine if it is the last one written, or
    -- the epoch has none; otherwise what came after it is gone, or it was
    -- never written here.
    recovered = at == last or (less(last, s) and less(last, at))
  end
end
return {e, recovered and 1 or 0, after, entries, more}
