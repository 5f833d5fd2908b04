-- Cluster-wide token bucket shared by every gateway instance.
-- KEYS[1]  the bucket (a hash: tokens, ts_ms), hash-tagged per route, e.g. mall:gw:rl:{/api/x}
-- ARGV[1]  refill rate, tokens per second (> 0)
-- ARGV[2]  burst: bucket capacity (>= 1)
-- ARGV[3]  cost of this request (normally 1)
-- returns  {1, 0} admitted, or {0, retry_after_ms} refused
-- Invariant kept atomically: over any interval the instances together admit at most
-- burst + rate * seconds requests. Time comes from Redis (TIME), so gateway clocks may differ.
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  ts = now
end

local admitted = 0
local retry_after = 0
if tokens >= cost then
  tokens = tokens - cost
  admitted = 1
else
  retry_after = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', ts)
-- An idle bucket is full again after burst/rate seconds; keep it no longer than that.
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {admitted, retry_after}
