-- Load one flash-sale item into Redis from the book of admissions: the first load before the
-- session starts, and again whenever Redis lost or rewound the item's state.
-- KEYS[1]  meta hash   KEYS[2]  stock   KEYS[3]  users   KEYS[4]  requests   KEYS[5]  returned
-- ARGV[1]  start_ms   ARGV[2]  end_ms   ARGV[3]  per-user limit   ARGV[4]  units put on sale
-- ARGV[5]  expire at, unix milliseconds (past the session end)
-- ARGV[6]  epoch: this load's number in Postgres, higher than any before
-- ARGV[7]  the Redis run_id the loader saw (a restarted Redis has another: the job reloads)
-- ARGV[8..] the booked admissions, five values each: order id, user id, request id, units,
--          1 if the order was cancelled and its units given back, else 0
-- returns  1 loaded, 0 a load of the same or a newer epoch is already there (left alone)
-- Invariant kept atomically: stock = units on sale - units of live booked admissions, per user
-- likewise, and every booked request id answers with its order; nothing of an older load stays.
local epoch = tonumber(ARGV[6])
if tonumber(redis.call('HGET', KEYS[1], 'epoch') or '-1') >= epoch then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local stock = tonumber(ARGV[4])
for i = 8, #ARGV, 5 do
  local order, user, request, qty = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  -- 3: admitted and booked (see admit.lua).
  redis.call('HSET', KEYS[4], #user .. ':' .. user .. ':' .. request, '3:' .. qty .. ':' .. order)
  if ARGV[i + 4] == '1' then
    redis.call('SADD', KEYS[5], order)
  else
    stock = stock - qty
    redis.call('HINCRBY', KEYS[3], user, qty)
  end
end
redis.call('SET', KEYS[2], stock)
redis.call('HSET', KEYS[1], 'start_ms', ARGV[1], 'end_ms', ARGV[2], 'limit', ARGV[3],
  'epoch', ARGV[6], 'run_id', ARGV[7])
for i = 1, 5 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('PEXPIREAT', KEYS[i], ARGV[5])
  end
end
return 1
