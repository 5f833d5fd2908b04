#!/usr/bin/env bash
# What the gateway's telemetry costs per proxied request: the gateway.sh setup (one mall-product
# upstream, `GET /api/products/0`, oha at 50 connections) measured with four configurations in
# turn, BENCH_ROUNDS rounds (default 3): the default stack; the log layer at `warn` (no access
# line, no span formatting); spans never sampled (`OTEL_TRACES_SAMPLER=always_off`); both. For
# each, the gateway process's user and system CPU (all threads, from `/proc/<pid>/stat`) per
# answered request, and the requests per second. Writes results/telemetry-cost-<timestamp>.md.
#
#   loadtest/telemetry-cost.sh
#
# Traffic goes to 127.0.0.1 only and every measurement is bounded in time.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PRODUCT_PORT=18081
GATEWAY_PORT=18080
ROUNDS=${BENCH_ROUNDS:-3}
URL="http://127.0.0.1:$GATEWAY_PORT/api/products/0"

ensure_tools oha
ensure_ports_free $PRODUCT_PORT $GATEWAY_PORT
build_and_deps

export MALL_REDIS_PREFIX=bench: MALL_AMQP_PREFIX=bench. MALL_DATABASE_SCHEMA=bench_product
start product mall-product MALL_HTTP_ADDR=127.0.0.1:$PRODUCT_PORT
wait_ready "http://127.0.0.1:$PRODUCT_PORT/readyz"

one_upstream_gateway $GATEWAY_PORT $PRODUCT_PORT
CONFIGS=("default" "MALL_LOG=warn" "OTEL_TRACES_SAMPLER=always_off" "MALL_LOG=warn OTEL_TRACES_SAMPLER=always_off")

measure() { # round config : one gateway with `config`, warmed up, then DURATION under oha
  local round=$1 config=$2 vars=() pid group
  [ "$config" != default ] && read -r -a vars <<<"$config"
  start gateway mall-gateway "${vars[@]}" "${GATEWAY_VARS[@]}"
  pid=${PIDS[-1]}
  for ((i = 0; i < 120; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL")" = 404 ] && break
    sleep 0.25
  done
  oha -z "$WARMUP" -c 50 --no-tui "$URL" >/dev/null
  local before after out="$RUN/oha-${#PIDS[@]}.json"
  before=$(awk '{print $14, $15}' "/proc/$pid/stat")
  group="" && [ "$round" = 1 ] && group="GET /api/products/0 through the gateway, by configuration"
  SAMPLE_GROUP=$group SAMPLE_URLS=http://127.0.0.1:$GATEWAY_PORT sample_start "$config"
  oha -z "$DURATION" -c 50 --no-tui --output-format json "$URL" >"$out"
  sample_stop
  after=$(awk '{print $14, $15}' "/proc/$pid/stat")
  echo "$round|$config|$before|$after|$(getconf CLK_TCK)|$out" >>"$RUN/rows"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
}

for ((round = 1; round <= ROUNDS; round++)); do
  for config in "${CONFIGS[@]}"; do
    say "round $round: $config"
    measure "$round" "$config"
  done
done

mkdir -p "$RESULTS"
stamp=$(date -u +%Y%m%d-%H%M%S)
report="$RESULTS/telemetry-cost-$stamp.md"
python3 - "$RUN" "$DURATION" >"$report" <<'PY'
import json, statistics, sys
run, duration = sys.argv[1], sys.argv[2]
rows = open(f"{run}/rows").read().split("\n")[:-1]
by = {}
print("# What the gateway's telemetry costs\n")
print(f"`GET /api/products/0` through mall-gateway in front of one mall-product, oha at 50 connections for {duration} "
      "per measurement; the gateway's user and system CPU per answered request (all threads, `/proc/<pid>/stat`).\n")
print("| round | configuration | requests/s | user us/req | system us/req |")
print("|---:|---|---:|---:|---:|")
for row in rows:
    rnd, config, before, after, tck, path = row.split("|")
    u1, s1 = map(int, before.split()); u2, s2 = map(int, after.split()); tck = int(tck)
    d = json.load(open(path))
    n = sum(d["statusCodeDistribution"].values())
    secs = d["summary"]["total"]
    user, sys_ = (u2 - u1) / tck * 1e6 / n, (s2 - s1) / tck * 1e6 / n
    by.setdefault(config, []).append((n / secs, user, sys_))
    print(f"| {rnd} | `{config}` | {n / secs:.0f} | {user:.1f} | {sys_:.1f} |")
print("\n## Medians\n")
print("| configuration | requests/s | user us/req | system us/req |")
print("|---|---:|---:|---:|")
for config, vals in by.items():
    med = [statistics.median(v[i] for v in vals) for i in range(3)]
    print(f"| `{config}` | {med[0]:.0f} | {med[1]:.1f} | {med[2]:.1f} |")
print("\nReproduce: `loadtest/telemetry-cost.sh`.")
PY
charts telemetry-cost "$stamp" >>"$report"
cp "$report" "$RESULTS/telemetry-cost-latest.md"
cat "$report"
echo
echo "report: $report"
