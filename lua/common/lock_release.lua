-- Release a lock only if this caller still owns it (compare-and-delete).
-- KEYS[1]  the lock key
-- ARGV[1]  the owner's random token
-- returns  1 released, 0 not the owner (expired, or taken over by another holder)
-- Invariant kept atomically: a holder whose lease expired can never delete the next holder's lock.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
