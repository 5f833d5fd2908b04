-- Give the units of a cancelled flash order back to its session: stock up, the buyer's count
-- down, exactly once per order.
-- KEYS[1]  meta hash   KEYS[2]  stock   KEYS[3]  users   KEYS[4]  returned: set of order ids
-- ARGV[1]  order id   ARGV[2]  user id   ARGV[3]  units
-- returns  1 given back now, 0 already given back, -1 the session's keys are gone (it ended
--          long ago; its unsold units went back to inventory with the session's reservation)
-- Invariant kept atomically: stock + units held by live admissions = units loaded, and an order
-- id is given back at most once, however often its cancellation is delivered.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
if redis.call('SADD', KEYS[4], ARGV[1]) == 0 then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[4], ttl)
end
local qty = tonumber(ARGV[3])
redis.call('INCRBY', KEYS[2], qty)
if redis.call('HINCRBY', KEYS[3], ARGV[2], -qty) <= 0 then
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return 1
