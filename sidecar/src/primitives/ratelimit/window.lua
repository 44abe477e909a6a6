-- Sliding-window or fixed-window decision, in one round trip.
-- KEYS[1] the windows' hash
-- ARGV[1] period in µs, ARGV[2] limit, ARGV[3] cost, ARGV[4] 'sliding' or
-- 'fixed', ARGV[5] '1' to peek (decide, take nothing)
return window(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5] == '1')
