-- Takes out expired fields. ARGV[2] most to take.
-- Returns {how many, the next expiry or ''}.
local n = reap(tonumber(ARGV[2]))
settle()
return {n, next_expiry()}
