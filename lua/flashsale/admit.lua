-- Admit one flash-sale purchase, atomically, or say why not.
-- KEYS[1]  meta: hash {start_ms, end_ms, limit, epoch, run_id}  e.g. mall:fs:{fs:<session>:<sku>}:meta
-- KEYS[2]  stock: integer units left                   mall:fs:{fs:<session>:<sku>}:stock
-- KEYS[3]  users: hash user_id -> units admitted       mall:fs:{fs:<session>:<sku>}:users
-- KEYS[4]  requests: hash (user, request_id) -> first answer  mall:fs:{fs:<session>:<sku>}:requests
-- ARGV[1]  user id
-- ARGV[2]  request id (the client's; a repeat by the same user returns the first answer)
-- ARGV[3]  quantity (>= 1)
-- ARGV[4]  now, unix milliseconds (the service's clock; windows are minutes long)
-- ARGV[5]  order id to use if admitted
-- returns  {code, order_id, stock_left, epoch, quantity admitted, booked}
--   1 admitted  2 repeat of an admitted request  -1 not loaded  -2 not started  -3 ended
--   -4 sold out (or fewer units left than asked)  -5 per-user limit exceeded  -6 bad quantity
--   epoch: the item's load (see load_item.lua); the service records the admission in Postgres
--   under it, and a record under an older load is refused there.
--   booked: 1 for a repeat whose admission the service marked as recorded in Postgres (its
--   answer's code is then 3, see mark_booked), so the repeat need not write there again.
-- Invariant kept atomically: units admitted <= units loaded, per user <= limit; a request id is
-- answered once. All keys share one hash tag, so the script runs unchanged on Redis Cluster.
-- Request ids are the client's, so they are scoped to the user (length-prefixed, so no two
-- (user, request id) pairs share a field): one buyer can never see another's answer.
local request = #ARGV[1] .. ':' .. ARGV[1] .. ':' .. ARGV[2]
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
local first = redis.call('HGET', KEYS[4], request)
if first then
  local code, qty, order = string.match(first, '^(-?%d+):(%d+):(.*)$')
  code = tonumber(code)
  local booked = 0
  if code == 3 then booked = 1 end
  if code == 1 or code == 3 then code = 2 end
  return {code, order, tonumber(redis.call('GET', KEYS[2]) or '0'), epoch, tonumber(qty), booked}
end

local function answer(code, order, qty)
  -- Remember the answer so a retried request id gets the same one; kept as long as the sale.
  redis.call('HSET', KEYS[4], request, code .. ':' .. qty .. ':' .. order)
  return {code, order, tonumber(redis.call('GET', KEYS[2]) or '0'), epoch, qty, 0}
end

local meta = redis.call('HMGET', KEYS[1], 'start_ms', 'end_ms', 'limit')
if not meta[1] or not meta[2] or not meta[3] then
  return {-1, '', 0, 0, 0, 0}
end
local qty = tonumber(ARGV[3])
if not qty or qty < 1 or qty ~= math.floor(qty) then
  return {-6, '', 0, epoch, 0, 0}
end
local now = tonumber(ARGV[4])
if now < tonumber(meta[1]) then return {-2, '', 0, epoch, 0, 0} end
if now >= tonumber(meta[2]) then return {-3, '', 0, epoch, 0, 0} end

local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
if stock < qty then return answer(-4, '', 0) end
local had = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if had + qty > tonumber(meta[3]) then return answer(-5, '', 0) end

redis.call('DECRBY', KEYS[2], qty)
redis.call('HINCRBY', KEYS[3], ARGV[1], qty)
return answer(1, ARGV[5], qty)
