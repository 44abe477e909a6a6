-- Restart the lease of a lock held with a token.
-- KEYS[1] the lock; ARGV[1] token, ARGV[2] new lease in ms
-- Returns 1 when extended, 0 when the token does not hold the lock.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
