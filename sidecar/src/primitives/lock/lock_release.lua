-- Release a lock held with a token, and wake waiters everywhere.
-- KEYS[1] the lock; ARGV[1] token, ARGV[2] release channel, ARGV[3] message
-- Returns 1 when released, 0 when the token does not hold the lock.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
