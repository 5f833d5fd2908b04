-- Admit one flash-sale purchase, atomically, or say why not.
-- KEYS[1]  meta: hash {start_ms, end_ms, limit}        e.g. mall:fs:{fs:<session>:<sku>}:meta
-- KEYS[2]  stock: integer units left                   mall:fs:{fs:<session>:<sku>}:stock
-- KEYS[3]  users: hash user_id -> units admitted       mall:fs:{fs:<session>:<sku>}:users
-- KEYS[4]  requests: hash (user, request_id) -> first answer  mall:fs:{fs:<session>:<sku>}:requests
-- KEYS[5]  admissions: stream, the durable record      mall:fs:{fs:<session>:<sku>}:admissions
-- ARGV[1]  user id
-- ARGV[2]  request id (the client's; a repeat by the same user returns the first answer)
-- ARGV[3]  quantity (>= 1)
-- ARGV[4]  now, unix milliseconds (the service's clock; windows are minutes long)
-- ARGV[5]  order id to use if admitted
-- ARGV[6]  the admission's trace context (W3C traceparent, may be empty), kept with the record
--          so the hand-off continues the buyer's trace
-- returns  {code, order_id, stock_left}
--   1 admitted  2 repeat of an admitted request  -1 not warmed up  -2 not started  -3 ended
--   -4 sold out (or fewer units left than asked)  -5 per-user limit exceeded  -6 bad quantity
-- Invariant kept atomically: units admitted <= units loaded, per user <= limit, and every
-- admission is in the stream before the answer says so; a request id is answered once.
-- All keys share one hash tag, so the script runs unchanged on Redis Cluster.
-- Request ids are the client's, so they are scoped to the user (length-prefixed, so no two
-- (user, request id) pairs share a field): one buyer can never see another's answer.
local request = #ARGV[1] .. ':' .. ARGV[1] .. ':' .. ARGV[2]
local first = redis.call('HGET', KEYS[4], request)
if first then
  local code, order = string.match(first, '^(-?%d+):(.*)$')
  code = tonumber(code)
  if code == 1 then code = 2 end
  return {code, order, tonumber(redis.call('GET', KEYS[2]) or '0')}
end

local function answer(code, order)
  -- Remember the answer so a retried request id gets the same one; kept as long as the sale.
  redis.call('HSET', KEYS[4], request, code .. ':' .. order)
  return {code, order, tonumber(redis.call('GET', KEYS[2]) or '0')}
end

local meta = redis.call('HMGET', KEYS[1], 'start_ms', 'end_ms', 'limit')
if not meta[1] or not meta[2] or not meta[3] then
  return {-1, '', 0}
end
local qty = tonumber(ARGV[3])
if not qty or qty < 1 or qty ~= math.floor(qty) then
  return {-6, '', 0}
end
local now = tonumber(ARGV[4])
if now < tonumber(meta[1]) then return {-2, '', 0} end
if now >= tonumber(meta[2]) then return {-3, '', 0} end

local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
if stock < qty then return answer(-4, '') end
local had = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if had + qty > tonumber(meta[3]) then return answer(-5, '') end

redis.call('DECRBY', KEYS[2], qty)
redis.call('HINCRBY', KEYS[3], ARGV[1], qty)
redis.call('XADD', KEYS[5], '*', 'order_id', ARGV[5], 'user_id', ARGV[1], 'quantity', qty,
  'request_id', ARGV[2], 'admitted_ms', now, 'trace', ARGV[6] or '')
return answer(1, ARGV[5])
