#!/usr/bin/env bash
# Gateway benchmark: one upstream measured three ways in one run (directly, through
# mall-gateway, through nginx configured as an equivalent reverse proxy) at 50 and 256
# connections with oha. Writes results/gateway-<timestamp>.md (and gateway-latest.md).
# The three are measured in turn over BENCH_ROUNDS rounds (default 3): on these shared cores the
# same binary drifts by 10-15% between back-to-back measurements, so each round gives its own
# ratios and the report takes their median.
#
#   loadtest/gateway.sh                    # 10 s per measurement
#   BENCH_DURATION=30s loadtest/gateway.sh
#
# Traffic goes to 127.0.0.1 only and every measurement is bounded in time.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PRODUCT_PORT=18081
GATEWAY_PORT=18080
NGINX_PORT=18090
# A fixed answer from mall-product's full middleware stack: id 0 can never exist, so its bloom
# filter answers 404 without touching Redis or SQL.
TARGET_PATH=${BENCH_PATH:-/api/products/0}

ensure_nginx() {
  if ! command -v nginx >/dev/null 2>&1; then
    say "installing nginx"
    [ "$(id -u)" -eq 0 ] || { echo "install nginx (apt-get install nginx-light) and run again" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  fi
}

ensure_tools oha
ensure_nginx
ensure_ports_free $PRODUCT_PORT $GATEWAY_PORT $NGINX_PORT
build_and_deps

say "starting the upstream (mall-product on :$PRODUCT_PORT) and mall-gateway on :$GATEWAY_PORT"
export MALL_REDIS_PREFIX=bench: MALL_AMQP_PREFIX=bench. MALL_DATABASE_SCHEMA=bench_product
start product mall-product MALL_HTTP_ADDR=127.0.0.1:$PRODUCT_PORT
PRODUCT_PID=${PIDS[-1]}
# The gateway's full default stack: tracing at the default sampler, metrics, access log, auth;
# only the rate limit is raised so that it cannot trigger.
start gateway mall-gateway MALL_HTTP_ADDR=127.0.0.1:$GATEWAY_PORT \
  MALL_UPSTREAM_PRODUCT=http://127.0.0.1:$PRODUCT_PORT MALL_UPSTREAM_INVENTORY=http://127.0.0.1:$PRODUCT_PORT \
  MALL_UPSTREAM_ORDER=http://127.0.0.1:$PRODUCT_PORT MALL_UPSTREAM_FLASHSALE=http://127.0.0.1:$PRODUCT_PORT \
  'MALL_GW_RATE_LIMITS=*:client:100000000/s' MALL_GW_MAX_CONCURRENCY=4096
GATEWAY_PID=${PIDS[-1]}

say "starting nginx on :$NGINX_PORT (keep-alive upstream, access log on)"
write_nginx_conf "$RUN/nginx.conf" $NGINX_PORT $PRODUCT_PORT "worker_processes auto;" "pid $RUN/nginx.pid;"
nginx -c "$RUN/nginx.conf" -p "$RUN"

wait_ready "http://127.0.0.1:$PRODUCT_PORT/readyz"
wait_ready "http://127.0.0.1:$GATEWAY_PORT/readyz"
for ((i = 0; i < 40; i++)); do curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT$TARGET_PATH" && break; sleep 0.25; done
nginx_master=$(cat "$RUN/nginx.pid")
# Whose CPU time each measurement reads: the upstream when measured directly, else the proxy
# alone (nginx: its master and workers).
declare -A SERVERS=(
  [direct]=$PRODUCT_PID
  [gateway]=$GATEWAY_PID
  [nginx]="$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')"
)

declare -A URLS=(
  [direct]="http://127.0.0.1:$PRODUCT_PORT$TARGET_PATH"
  [gateway]="http://127.0.0.1:$GATEWAY_PORT$TARGET_PATH"
  [nginx]="http://127.0.0.1:$NGINX_PORT$TARGET_PATH"
)
ROUNDS=${BENCH_ROUNDS:-3}
for ((r = 1; r <= ROUNDS; r++)); do
  for c in $CONNECTIONS; do
    for name in direct gateway nginx; do
      warmup "$c" "${URLS[$name]}"
      MEASURE_PIDS=${SERVERS[$name]} measure "$name-r$r" "$c" "${URLS[$name]}"
    done
  done
done

mkdir -p "$RESULTS"
stamp=$(date -u +%Y%m%d-%H%M%S)
report="$RESULTS/gateway-$stamp.md"
python3 - "$RUN" "$CONNECTIONS" "$DURATION" "$TARGET_PATH" "$ROUNDS" >"$report" <<'PY'
import json, os, platform, statistics, subprocess, sys
run, conns, duration, path = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4]
rounds = range(1, int(sys.argv[5]) + 1)
def load(name, c, r):
    d = json.load(open(os.path.join(run, f"{name}-r{r}-{c}.json")))
    pct = d.get("latencyPercentiles", {})
    codes = d.get("statusCodeDistribution", {})
    return {
        "rps": d["summary"]["requestsPerSec"],
        "p50": pct.get("p50", 0) * 1e3, "p99": pct.get("p99", 0) * 1e3, "p999": pct.get("p99.9", 0) * 1e3,
        "ok": d["summary"].get("successRate", 0), "codes": codes,
        "errors": sum(d.get("errorDistribution", {}).values()),
        "cpu": cpu_us(name, c, r, d),
    }
def cpu_us(name, c, r, d):
    """The measured server's CPU time (user + system, all threads) per answered request, in us."""
    try:
        spent = int(open(os.path.join(run, f"{name}-r{r}-{c}.cpu")).read())
    except (OSError, ValueError):
        return None
    answered = sum(d.get("statusCodeDistribution", {}).values())
    return spent / answered if answered else None
def us(v):
    return f"{v:.1f}" if v is not None else ""
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print("# Gateway benchmark\n")
print(f"One run on this machine ({cpu} cores, {platform.platform()}): the same upstream (one mall-product")
print(f"instance, `GET {path}`: a fixed JSON answer from its full stack) measured directly, through mall-gateway (full")
print("default stack: tracing, metrics, access log; rate limit raised) and through nginx as an")
print(f"equivalent keep-alive reverse proxy (access log on). oha, {duration} per measurement after a warm-up,")
print(f"the three in turn over {len(rounds)} rounds; load generator, proxy and upstream share the same cores.\n")
print("| round | connections | target | requests/s | p50 ms | p99 ms | p99.9 ms | server CPU us/req | status codes | errors |")
print("|---:|---:|---|---:|---:|---:|---:|---:|---|---:|")
per = {c: [] for c in conns}
for r in rounds:
    for c in conns:
        x = {n: load(n, c, r) for n in ("direct", "gateway", "nginx")}
        for n in ("direct", "gateway", "nginx"):
            v = x[n]
            print(f"| {r} | {c} | {n} | {v['rps']:.0f} | {v['p50']:.2f} | {v['p99']:.2f} | {v['p999']:.2f} | {us(v['cpu'])} | {v['codes']} | {v['errors']} |")
        g, d, n = x["gateway"], x["direct"], x["nginx"]
        cpu = g["cpu"] / n["cpu"] if g["cpu"] and n["cpu"] else None
        per[c].append((g["rps"] / d["rps"], g["rps"] / n["rps"], n["p99"] / g["p99"], cpu))
print("\n| connections | gateway/direct req/s | gateway/nginx req/s | nginx p99 / gateway p99 | gateway/nginx req/s by round | gateway/nginx CPU per request |")
print("|---:|---:|---:|---:|---|---:|")
for c in conns:
    med = [statistics.median(v[i] for v in per[c]) for i in range(3)]
    rounds_text = ", ".join(f"{v[1]:.2f}" for v in per[c])
    cpus = [v[3] for v in per[c] if v[3] is not None]
    cpu_text = f"{statistics.median(cpus):.2f}" if cpus else ""
    print(f"| {c} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {rounds_text} | {cpu_text} |")
print("\nRatios are the median of the rounds' ratios. Target: gateway/nginx req/s >= 1.0 and nginx p99 /")
print("gateway p99 >= 1.0 (the gateway at least matches nginx). Server CPU is the user + system time")
print("(all threads, from `/proc/<pid>/stat`) of the upstream when measured directly, of the proxy alone")
print("otherwise (nginx: master and workers), during the run, divided by the answered requests.")
print("Reproduce: `loadtest/gateway.sh`.")
PY
cp "$report" "$RESULTS/gateway-latest.md"
cat "$report"
echo
echo "report: $report"
