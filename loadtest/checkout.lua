-- wrk script for loadtest/checkout.sh: every request is a checkout of one random SKU by one of
-- many users, with its own Idempotency-Key. Reads TOKENS (a file, one JWT per line) and SKUS.
local tokens = {}
local skus = tonumber(os.getenv("SKUS") or "1000")
local counter = 0
local thread_seq = 0
-- `id` is a global set per thread by setup() (a local here would shadow it).

function setup(thread)
  thread_seq = thread_seq + 1
  thread:set("id", thread_seq)
end

function init(args)
  for line in io.lines(os.getenv("TOKENS")) do
    tokens[#tokens + 1] = line
  end
  math.randomseed(id * 7919)
end

function request()
  counter = counter + 1
  local token = tokens[((counter * 31 + id) % #tokens) + 1]
  local sku = math.random(1, skus)
  local body = '{"items":[{"sku_id":' .. sku .. ',"quantity":1}]}'
  return wrk.format("POST", "/api/orders", {
    ["Authorization"] = "Bearer " .. token,
    ["Idempotency-Key"] = "bench-" .. id .. "-" .. counter,
    ["Content-Type"] = "application/json",
  }, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    "RESULT requests=%d duration_us=%d non2xx=%d errors=%d p50_ms=%.2f p99_ms=%.2f p999_ms=%.2f\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
