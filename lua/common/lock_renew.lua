-- Extend a lock's lease only if this caller still owns it (compare-and-pexpire).
-- KEYS[1]  the lock key
-- ARGV[1]  the owner's random token
-- ARGV[2]  the new lease in milliseconds
-- returns  1 renewed, 0 not the owner (the lease already ran out; the holder must stop)
-- Invariant kept atomically: a holder can never resurrect a lock another instance now holds.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
