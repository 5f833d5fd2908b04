#!/usr/bin/env bash
# Gateway benchmark: one upstream measured four ways in one run (directly, through
# mall-gateway, through nginx configured as an equivalent reverse proxy, and through a proxy of
# hyper alone, gateway/examples/bare_proxy.rs: the floor under the gateway) at 50 and 256
# connections with oha, for two answers: a 404 (`/api/products/0`, ruled out by the bloom
# filter) and a real 200 JSON answer (a hot SKU, served from the instance's L1 cache). Writes
# results/gateway-<timestamp>.md (and gateway-latest.md).
# The four are measured in turn over BENCH_ROUNDS rounds (default 3): on these shared cores the
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
BARE_PORT=18095
# Two answers from mall-product's full middleware stack: id 0 can never exist, so its bloom
# filter answers 404 without touching Redis or SQL; SKU 1 of the seeded catalog is a 200 JSON
# body from L1 after its first read.
PATHS=${BENCH_PATHS:-/api/products/0 /api/skus/1}
SCHEMA=bench_product

ensure_nginx() {
  if ! command -v nginx >/dev/null 2>&1; then
    say "installing nginx"
    [ "$(id -u)" -eq 0 ] || { echo "install nginx (apt-get install nginx-light) and run again" >&2; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
  fi
}

ensure_tools oha
ensure_nginx
ensure_ports_free $PRODUCT_PORT $GATEWAY_PORT $NGINX_PORT $BARE_PORT
build_and_deps

say "a fresh catalog of 1,000 SKUs in schema $SCHEMA"
export MALL_REDIS_PREFIX=bench: MALL_AMQP_PREFIX=bench. MALL_DATABASE_SCHEMA=$SCHEMA
psql "postgres://postgres:postgres@127.0.0.1:5432/mall?sslmode=disable" -qc "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1
redis-cli --scan --pattern 'bench:*' | xargs -r redis-cli del >/dev/null
"$ROOT/target/release/mall-product" seed --skus 1000

say "starting the upstream (mall-product on :$PRODUCT_PORT) and mall-gateway on :$GATEWAY_PORT"
start product mall-product MALL_HTTP_ADDR=127.0.0.1:$PRODUCT_PORT
PRODUCT_PID=${PIDS[-1]}
one_upstream_gateway $GATEWAY_PORT $PRODUCT_PORT
start gateway mall-gateway "${GATEWAY_VARS[@]}"
GATEWAY_PID=${PIDS[-1]}
# As many serving threads as the gateway's default (one per core).
env BARE_ADDR=127.0.0.1:$BARE_PORT BARE_UPSTREAM=127.0.0.1:$PRODUCT_PORT BARE_THREADS="$(nproc)" \
  "$ROOT/target/release/examples/bare_proxy" >"$RUN/bare.log" 2>&1 &
PIDS+=($!)
BARE_PID=$!

say "starting nginx on :$NGINX_PORT (keep-alive upstream, access log on)"
write_nginx_conf "$RUN/nginx.conf" $NGINX_PORT $PRODUCT_PORT "worker_processes auto;" "pid $RUN/nginx.pid;"
nginx -c "$RUN/nginx.conf" -p "$RUN"

wait_ready "http://127.0.0.1:$PRODUCT_PORT/readyz"
wait_ready "http://127.0.0.1:$GATEWAY_PORT/readyz"
for port in $NGINX_PORT $BARE_PORT; do
  for path in $PATHS; do
    for ((i = 0; i < 80; i++)); do
      code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port$path" || true)
      case "$path:$code" in */products/0:404 | */skus/*:200) break ;; esac
      sleep 0.25
    done
  done
done
nginx_master=$(cat "$RUN/nginx.pid")
# Whose CPU time each measurement reads: the upstream when measured directly, else the proxy
# alone (nginx: its master and workers).
declare -A SERVERS=(
  [direct]=$PRODUCT_PID
  [gateway]=$GATEWAY_PID
  [bare]=$BARE_PID
  [nginx]="$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')"
)
declare -A PORTS=([direct]=$PRODUCT_PORT [gateway]=$GATEWAY_PORT [nginx]=$NGINX_PORT [bare]=$BARE_PORT)
ROUNDS=${BENCH_ROUNDS:-3}
for path in $PATHS; do
  tag=$(echo "$path" | tr -c 'a-z0-9\n' '_')
  for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CONNECTIONS; do
      for name in direct gateway nginx bare; do
        url="http://127.0.0.1:${PORTS[$name]}$path"
        warmup "$c" "$url"
        # Round 1 is charted; nginx and hyper alone have no /metrics, so their upstream's are read.
        group="" && [ "$r" = 1 ] && group="GET $path, $c connections"
        sampled=http://127.0.0.1:${PORTS[$name]} && [[ $name == nginx || $name == bare ]] && sampled=http://127.0.0.1:$PRODUCT_PORT
        SAMPLE_GROUP=$group SAMPLE_LABEL=$name SAMPLE_URLS=$sampled MEASURE_PIDS=${SERVERS[$name]} \
          measure "$tag-$name-r$r" "$c" "$url"
      done
    done
  done
done

mkdir -p "$RESULTS"
stamp=$(date -u +%Y%m%d-%H%M%S)
report="$RESULTS/gateway-$stamp.md"
python3 - "$RUN" "$CONNECTIONS" "$DURATION" "$PATHS" "$ROUNDS" >"$report" <<'PY'
import json, os, platform, re, statistics, subprocess, sys
run, conns, duration, paths = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4].split()
rounds = range(1, int(sys.argv[5]) + 1)
def tag(path):
    return re.sub(r"[^a-z0-9]", "_", path)
def microseconds(file):
    try:
        return int(open(file).read())
    except (OSError, ValueError):
        return None
def load(path, name, c, r):
    base = os.path.join(run, f"{tag(path)}-{name}-r{r}-{c}")
    d = json.load(open(base + ".json"))
    pct = d.get("latencyPercentiles", {})
    codes = d.get("statusCodeDistribution", {})
    spent, user = microseconds(base + ".cpu"), microseconds(base + ".cpu.user")
    answered = sum(codes.values())
    return {
        "rps": d["summary"]["requestsPerSec"],
        "p50": pct.get("p50", 0) * 1e3, "p99": pct.get("p99", 0) * 1e3, "p999": pct.get("p99.9", 0) * 1e3,
        "codes": codes, "errors": sum(d.get("errorDistribution", {}).values()),
        "cpu": spent / answered if spent is not None and answered else None,
        "user": user / answered if user is not None and answered else None,
    }
def us(v):
    return f"{v:.1f}" if v is not None else ""
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print("# Gateway benchmark\n")
print(f"One run on this machine ({cpu} cores, {platform.platform()}): the same upstream (one mall-product")
print("instance over a seeded catalog of 1,000 SKUs) measured directly, through mall-gateway (full default")
print("stack: tracing, metrics, access log; rate limit raised) and through nginx as an equivalent")
print("keep-alive reverse proxy (access log on), and through `bare`, a proxy of hyper alone (no layers, no")
print(f"telemetry: `gateway/examples/bare_proxy.rs`), the floor under the gateway's figures. oha, {duration}")
print(f"per measurement after a warm-up, the four in turn over {len(rounds)} rounds; load generator, proxies")
print("and upstream share the same cores. Two answers:")
print("`/api/products/0` is a **404** (id 0 is ruled out by the bloom filter: the cheapest answer the")
print("service gives), `/api/skus/1` a **200** with the SKU's JSON from the instance's L1 cache.\n")
summary = []
for path in paths:
    print(f"## `GET {path}`\n")
    print("| round | connections | target | requests/s | p50 ms | p99 ms | p99.9 ms | server CPU us/req | of it user | status codes | errors |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
    per = {c: [] for c in conns}
    for r in rounds:
        for c in conns:
            x = {n: load(path, n, c, r) for n in ("direct", "gateway", "nginx", "bare")}
            for n in ("direct", "gateway", "nginx", "bare"):
                v = x[n]
                print(f"| {r} | {c} | {n} | {v['rps']:.0f} | {v['p50']:.2f} | {v['p99']:.2f} | {v['p999']:.2f} | {us(v['cpu'])} | {us(v['user'])} | {v['codes']} | {v['errors']} |")
            g, d, n, b = x["gateway"], x["direct"], x["nginx"], x["bare"]
            per[c].append({
                "direct": g["rps"] / d["rps"], "nginx": g["rps"] / n["rps"], "p99": n["p99"] / g["p99"],
                "cpu": g["cpu"] / n["cpu"] if g["cpu"] and n["cpu"] else None,
                "user": g["user"] / n["user"] if g["user"] and n["user"] else None,
                "bare": b["rps"] / n["rps"], "bare_p99": n["p99"] / b["p99"],
            })
    print()
    def median(ratios, key, fmt="{:.2f}"):
        known = [v[key] for v in ratios if v[key] is not None]
        return fmt.format(statistics.median(known)) if known else ""
    for c in conns:
        med = [median(per[c], k) for k in ("direct", "nginx", "p99", "cpu", "user", "bare", "bare_p99")]
        summary.append((path, c, med, ", ".join(f"{v['nginx']:.2f}" for v in per[c])))
print("## Summary\n")
print("| answer | connections | gateway/direct req/s | gateway/nginx req/s | nginx p99 / gateway p99 | gateway/nginx req/s by round | gateway/nginx CPU per request | of it user | bare/nginx req/s | nginx p99 / bare p99 |")
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|")
for path, c, (direct, nginx, p99, cpu_, user, bare, bare_p99), rounds_text in summary:
    print(f"| `{path}` | {c} | {direct} | {nginx} | {p99} | {rounds_text} | {cpu_} | {user} | {bare} | {bare_p99} |")
print("\nRatios are the median of the rounds' ratios. Target (issue \"One HTTP stack\"): gateway/nginx")
print("req/s >= 0.9 and nginx p99 / gateway p99 >= 0.9. Server CPU is the user + system time (all threads,")
print("from `/proc/<pid>/stat`) of the upstream when measured directly, of the proxy alone otherwise")
print("(nginx: its master and workers), during the run, divided by the answered requests; \"of it user\"")
print("is the part spent in user space (the rest is the kernel's: system calls, TCP). `bare` is hyper alone on")
print("as many serving threads: what hyper and tokio reach with no layer, the gateway's ceiling.")
print("Reproduce: `loadtest/gateway.sh`.")
PY
charts gateway "$stamp" >>"$report"
cp "$report" "$RESULTS/gateway-latest.md"
cat "$report"
echo
echo "report: $report"
