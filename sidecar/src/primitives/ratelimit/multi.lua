-- Several decisions, all or none: every check is decided against the state
-- before any of them, and every cost is taken only if each fits.
-- KEYS[i] the state of check i (no key twice); ARGV, four per check:
-- algorithm ('gcra', 'sliding' or 'fixed'), the GCRA interval or the
-- window period in µs, the burst or the limit, the cost.
-- Returns the decisions flattened, four numbers each: taken when every
-- check fits, peeked (nothing taken) otherwise.
local function decide(i, peek)
  local base = (i - 1) * 4
  local algorithm = ARGV[base + 1]
  local a, b, cost = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  if algorithm == 'gcra' then
    return gcra(KEYS[i], a, b, cost, peek)
  end
  return window(KEYS[i], a, b, cost, algorithm, peek)
end

local decisions, all = {}, true
for i = 1, #KEYS do
  decisions[i] = decide(i, true)
  if decisions[i][1] ~= 1 then
    all = false
  end
end
if all then
  for i = 1, #KEYS do
    decisions[i] = decide(i, false)
  end
end
local reply = {}
for _, d in ipairs(decisions) do
  for _, v in ipairs(d) do
    reply[#reply + 1] = v
  end
end
return reply
