-- Mark an admitted request as booked in Postgres, so its repeats skip the booking write.
-- KEYS[1]  requests: hash (user, request_id) -> first answer (see admit.lua)
-- ARGV[1]  user id   ARGV[2]  request id   ARGV[3]  units   ARGV[4]  order id
-- returns  1 marked, 0 the request is not there (the item was reloaded or lost meanwhile;
--          a reload from the book marks it itself)
-- Invariant kept atomically: only an answer that exists is changed, so no key is created
-- without the item's expiry.
local request = #ARGV[1] .. ':' .. ARGV[1] .. ':' .. ARGV[2]
if redis.call('HEXISTS', KEYS[1], request) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], request, '3:' .. ARGV[3] .. ':' .. ARGV[4])
return 1
