-- Load one flash-sale item into Redis before its session starts, idempotently.
-- KEYS[1]  meta hash   KEYS[2]  stock   KEYS[3]  users   KEYS[4]  requests   KEYS[5]  admissions
-- ARGV[1]  start_ms   ARGV[2]  end_ms   ARGV[3]  per-user limit   ARGV[4]  quantity
-- ARGV[5]  expire at, unix milliseconds (past the session end, so nothing outlives the sale
--          by much, and nothing expires while it runs)
-- returns  1 if the stock was loaded now, 0 if it was already there (a rerun never resets it)
-- Invariant kept atomically: the stock counter is set once per sale; a second warm-up (another
-- instance, a restart) cannot hand out the same units again.
redis.call('HSET', KEYS[1], 'start_ms', ARGV[1], 'end_ms', ARGV[2], 'limit', ARGV[3])
local loaded = redis.call('SET', KEYS[2], ARGV[4], 'NX')
for i = 1, 5 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('PEXPIREAT', KEYS[i], ARGV[5])
  end
end
if loaded then return 1 end
return 0
