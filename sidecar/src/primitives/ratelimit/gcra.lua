-- GCRA (token bucket) decision, in one round trip.
-- KEYS[1] the theoretical arrival time (TAT), µs
-- ARGV[1] emission interval in µs (period / limit), ARGV[2] burst,
-- ARGV[3] cost, ARGV[4] '1' to peek (decide, take nothing)
return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1')
