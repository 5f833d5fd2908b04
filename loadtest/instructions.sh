#!/usr/bin/env bash
# Instructions per request: the gateway benchmark's paths counted with valgrind's callgrind,
# which counts instructions instead of timing them, so the figure does not drift with what the
# rest of the shared machine is doing (gateway.sh's throughput moves 10-15% between two
# back-to-back runs of the same binary; a 3% change only shows here). Measured, each process
# alone under callgrind with one serving thread and wrk (1 thread, 8 connections):
#   - mall-product answering `GET /api/products/0` directly (the upstream's own cost), and the
#     same request continuing a caller's trace (W3C and B3 fields), as behind the gateway;
#   - mall-gateway proxying it to a mall-product outside valgrind (the gateway's cost alone),
#     with the default compact log lines and again with JSON lines (`MALL_LOG_FORMAT=json`, as
#     the container images and the Kubernetes manifests run every service); likewise
#     mall-product continuing a trace with JSON lines;
#   - nginx proxying it the same way (one worker process, the gateway.sh configuration);
#   - a proxy of hyper alone proxying it (gateway/examples/bare_proxy.rs: no layers, no
#     telemetry), the floor under the gateway's figure: what is above it is the gateway's own;
#   - mall-gateway's own 404 (`GET /nowhere`, the reference of flashsale.sh's sold-out target);
#   - mall-flashsale answering a late buyer of a sold-out item (`POST /api/flashsale/purchase`
#     with a gateway-signed identity, the request flashsale.sh measures), beside a mall-inventory
#     outside valgrind; its background jobs run as configured by default.
# Each count is the whole process's (every thread: the upstream connections' tasks, health
# checks, the log writer) from a reset after a warm-up to a dump after the measured run,
# divided by the requests wrk made. Writes results/instructions-<timestamp>.md (and -latest).
#
#   loadtest/instructions.sh                 # 5 s per path (a few thousand requests each)
#   BENCH_DURATION=10s loadtest/instructions.sh
#
# Traffic goes to 127.0.0.1 only and every measurement is bounded in time.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DURATION=${BENCH_DURATION:-5s}
PRODUCT_PORT=18081
GATEWAY_PORT=18096
NGINX_PORT=18097
DIRECT_PORT=18098
INVENTORY_PORT=18082
FLASH_PORT=18099
BARE_PORT=18095
TARGET_PATH=/api/products/0

ensure_tools wrk
if ! command -v valgrind >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { echo "install valgrind and nginx-light, then run again" >&2; exit 1; }
  say "installing valgrind and nginx (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind nginx-light >/dev/null
fi
ensure_ports_free $PRODUCT_PORT $GATEWAY_PORT $NGINX_PORT $DIRECT_PORT $INVENTORY_PORT $FLASH_PORT $BARE_PORT
build_and_deps

export MALL_REDIS_PREFIX=bench: MALL_AMQP_PREFIX=bench. MALL_DATABASE_SCHEMA=bench_product
say "starting the upstream (mall-product on :$PRODUCT_PORT, not under valgrind)"
# A small catalog: inventory asks it whether SKU 1 exists before stocking it below.
"$ROOT/target/release/mall-product" seed --skus 10 >/dev/null
start product mall-product MALL_HTTP_ADDR=127.0.0.1:$PRODUCT_PORT
wait_ready "http://127.0.0.1:$PRODUCT_PORT/readyz"

# One process doing all the work, in the foreground, so that callgrind counts all of it.
write_nginx_conf "$RUN/nginx.conf" $NGINX_PORT $PRODUCT_PORT "daemon off;" "master_process off;" \
  "worker_processes 1;" "pid $RUN/nginx-cg.pid;"

under_callgrind() { # name [VAR=value...] command... : starts it under callgrind, its pid in CG_PID
  local name=$1 vars=()
  shift
  while [[ $# -gt 0 && $1 == *=* ]]; do vars+=("$1"); shift; done
  # The variables go in front of valgrind, not through env(1) inside it: valgrind stops
  # counting at an exec.
  env "${vars[@]}" valgrind --tool=callgrind --callgrind-out-file="$RUN/cg-$name.%p" "$@" >"$RUN/$name.log" 2>&1 &
  CG_PID=$!
  PIDS+=("$CG_PID")
}

answers() { # name url status : waits (2 minutes at most: callgrind starts slowly) for that answer
  local got
  for ((i = 0; i < 480; i++)); do
    got=$(curl -s -o /dev/null -w '%{http_code}' "$2" 2>/dev/null || true)
    [ "$got" = "$3" ] && return 0
    sleep 0.25
  done
  echo "$1: $2 answered $got, not $3" >&2
  exit 1
}

count() { # name url status [wrk script] : one path's instructions per request into $RUN/name.count
  # (with a script, the caller has checked the answer: wrk sends what the script sets)
  local name=$1 url=$2 status=$3 script=()
  [ $# -ge 4 ] && script=(-s "$4")
  [ ${#script[@]} -gt 0 ] || answers "$name" "$url" "$status"
  wrk -t1 -c8 -d3s "${script[@]}" "$url" >/dev/null
  callgrind_control -z "$CG_PID" >/dev/null
  say "$name: $url under callgrind, $DURATION"
  wrk -t1 -c8 -d"$DURATION" "${script[@]}" "$url" >"$RUN/$name.wrk"
  callgrind_control -d "$CG_PID" >/dev/null
  local dump
  for ((i = 0; i < 40; i++)); do
    dump=$(ls "$RUN/cg-$name.$CG_PID".* 2>/dev/null | head -n 1 || true)
    [ -n "$dump" ] && break
    sleep 0.25
  done
  [ -n "$dump" ] || { echo "$name: no callgrind dump" >&2; exit 1; }
  local total requests
  total=$(callgrind_annotate "$dump" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
  requests=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$RUN/$name.wrk")
  echo "$total $requests" >"$RUN/$name.count"
  kill "$CG_PID" 2>/dev/null || true
  wait "$CG_PID" 2>/dev/null || true
}

# The gateway as gateway.sh runs it (full default stack, rate limit raised), on one serving
# thread so that one connection task's work is not split across threads.
one_upstream_gateway $GATEWAY_PORT $PRODUCT_PORT
gateway_env=(MALL_HTTP_THREADS=1 "${GATEWAY_VARS[@]}")

under_callgrind direct MALL_HTTP_THREADS=1 MALL_HTTP_ADDR=127.0.0.1:$DIRECT_PORT "$ROOT/target/release/mall-product"
count direct "http://127.0.0.1:$DIRECT_PORT$TARGET_PATH" 404
# The same answer to a request continuing a trace (W3C and B3 context), as every request
# behind the gateway does.
cat >"$RUN/continued.lua" <<'LUA'
wrk.headers["traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
wrk.headers["b3"] = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"
LUA
under_callgrind continued MALL_HTTP_THREADS=1 MALL_HTTP_ADDR=127.0.0.1:$DIRECT_PORT "$ROOT/target/release/mall-product"
answers continued "http://127.0.0.1:$DIRECT_PORT$TARGET_PATH" 404
count continued "http://127.0.0.1:$DIRECT_PORT$TARGET_PATH" 404 "$RUN/continued.lua"
under_callgrind continuedjson MALL_LOG_FORMAT=json MALL_HTTP_THREADS=1 MALL_HTTP_ADDR=127.0.0.1:$DIRECT_PORT \
  "$ROOT/target/release/mall-product"
answers continuedjson "http://127.0.0.1:$DIRECT_PORT$TARGET_PATH" 404
count continuedjson "http://127.0.0.1:$DIRECT_PORT$TARGET_PATH" 404 "$RUN/continued.lua"
under_callgrind gateway "${gateway_env[@]}" "$ROOT/target/release/mall-gateway"
count gateway "http://127.0.0.1:$GATEWAY_PORT$TARGET_PATH" 404
under_callgrind gatewayjson MALL_LOG_FORMAT=json "${gateway_env[@]}" "$ROOT/target/release/mall-gateway"
count gatewayjson "http://127.0.0.1:$GATEWAY_PORT$TARGET_PATH" 404
under_callgrind nginx nginx -c "$RUN/nginx.conf" -p "$RUN"
count nginx "http://127.0.0.1:$NGINX_PORT$TARGET_PATH" 404
under_callgrind bare BARE_THREADS=1 BARE_ADDR=127.0.0.1:$BARE_PORT BARE_UPSTREAM=127.0.0.1:$PRODUCT_PORT \
  "$ROOT/target/release/examples/bare_proxy"
count bare "http://127.0.0.1:$BARE_PORT$TARGET_PATH" 404
under_callgrind gateway404 "${gateway_env[@]}" "$ROOT/target/release/mall-gateway"
count gateway404 "http://127.0.0.1:$GATEWAY_PORT/nowhere" 404

# The sold-out answer: a one-unit session, its unit bought, then late buyers.
say "starting mall-inventory on :$INVENTORY_PORT and mall-flashsale under callgrind on :$FLASH_PORT"
PG="postgres://postgres:postgres@127.0.0.1:5432/mall?sslmode=disable"
for schema in bench_inventory bench_flashsale; do psql "$PG" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1; done
redis-cli --scan --pattern "bench:fs:*" | xargs -r redis-cli del >/dev/null
start inventory mall-inventory MALL_HTTP_ADDR=127.0.0.1:$INVENTORY_PORT MALL_DATABASE_SCHEMA=bench_inventory \
  MALL_PRODUCT_URLS=http://127.0.0.1:$PRODUCT_PORT
under_callgrind soldout MALL_HTTP_THREADS=1 MALL_HTTP_ADDR=127.0.0.1:$FLASH_PORT MALL_DATABASE_SCHEMA=bench_flashsale \
  MALL_INVENTORY_URLS=http://127.0.0.1:$INVENTORY_PORT "$ROOT/target/release/mall-flashsale"
wait_ready "http://127.0.0.1:$INVENTORY_PORT/readyz"
wait_ready "http://127.0.0.1:$FLASH_PORT/readyz"
identity() { # user roles -> the gateway-signed identity header (mall_common::identity), as "name: value"
  python3 - "$1" "$2" mall-dev-internal-secret-change-me <<'PY'
import hashlib, hmac, sys, time
user, roles, secret = sys.argv[1], sys.argv[2], sys.argv[3].encode()
signed = f"{int(time.time())};{roles};{user}"
sig = hmac.new(secret, f"v1;{signed}".encode(), hashlib.sha256).hexdigest()
print(f"x-mall-identity: v1;{sig};{signed}")
PY
}
FS="http://127.0.0.1:$FLASH_PORT"
admin=$(identity bench-admin admin)
buyer=$(identity bench-late buyer)
json='Content-Type: application/json'
curl -fsS -o /dev/null -X POST "http://127.0.0.1:$INVENTORY_PORT/admin/stock/1/receive" -H "$admin" -H "$json" -d '{"quantity":10}'
starts=$(date -u -d '-2 seconds' +%Y-%m-%dT%H:%M:%SZ)
ends=$(date -u -d '+30 minutes' +%Y-%m-%dT%H:%M:%SZ)
session=$(curl -fsS -X POST "$FS/admin/flashsale/sessions" -H "$admin" -H "$json" \
  -d "{\"starts_at\":\"$starts\",\"ends_at\":\"$ends\",\"items\":[{\"sku_id\":1,\"price_cents\":990,\"quantity\":1,\"per_user_limit\":1}]}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')
for ((i = 0; i < 240; i++)); do
  curl -fsS "$FS/api/flashsale/sessions" | grep -q "\"session_id\":$session" && break
  sleep 0.25
done
token=$(curl -fsS -X POST "$FS/api/flashsale/sessions/$session/items/1/token" -H "$buyer" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
buy() { # request id -> the purchase's status
  curl -sS -o /dev/null -w '%{http_code}' -X POST "$FS/api/flashsale/purchase" -H "$buyer" -H "$json" \
    -d "{\"session_id\":$session,\"sku_id\":1,\"quantity\":1,\"token\":\"$token\",\"request_id\":\"$1\"}"
}
for ((i = 0; i < 120; i++)); do first=$(buy first); [ "$first" = 202 ] && break; sleep 0.25; done
[ "$first" = 202 ] || { echo "the session's one unit could not be bought ($first)" >&2; exit 1; }
late=$(buy late)
[ "$late" = 409 ] || { echo "a late buyer was answered $late, not 409 sold_out" >&2; exit 1; }
python3 - "$RUN/late.lua" "$buyer" "{\"session_id\":$session,\"sku_id\":1,\"quantity\":1,\"token\":\"$token\",\"request_id\":\"late\"}" <<'PY'
import json, sys
out, header, body = sys.argv[1:4]
name, value = header.split(":", 1)
open(out, "w").write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                     f'wrk.headers[{json.dumps(name)}] = {json.dumps(value.strip())}\n'
                     'wrk.headers["Content-Type"] = "application/json"\n')
PY
count soldout "$FS/api/flashsale/purchase" 409 "$RUN/late.lua"

mkdir -p "$RESULTS"
stamp=$(date -u +%Y%m%d-%H%M%S)
report="$RESULTS/instructions-$stamp.md"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || commit="$commit with uncommitted changes"
python3 - "$RUN" "$DURATION" "$TARGET_PATH" "$commit" >"$report" <<'PY'
import os, sys
run, duration, path, commit = sys.argv[1:5]
rows = [
    ("direct", f"mall-product, `GET {path}` directly"),
    ("continued", f"mall-product, `GET {path}` continuing a trace (`traceparent`, `b3`)"),
    ("continuedjson", f"mall-product, `GET {path}` continuing a trace, JSON log lines"),
    ("gateway", f"mall-gateway proxying `GET {path}`"),
    ("gatewayjson", f"mall-gateway proxying `GET {path}`, JSON log lines (`MALL_LOG_FORMAT=json`)"),
    ("nginx", f"nginx (one worker) proxying `GET {path}`"),
    ("bare", f"hyper alone (`gateway/examples/bare_proxy.rs`) proxying `GET {path}`"),
    ("gateway404", "mall-gateway, its own 404 (`GET /nowhere`)"),
    ("soldout", "mall-flashsale, a late buyer's 409 `sold_out` (`POST /api/flashsale/purchase`)"),
]
counts = {}
for name, _ in rows:
    total, requests = open(os.path.join(run, f"{name}.count")).read().split()
    counts[name] = (int(total), int(requests))
per = {name: t / r for name, (t, r) in counts.items()}
print("# Instructions per request\n")
print(f"Counted with `valgrind --tool=callgrind` (commit {commit}): each process alone under callgrind (one")
print(f"serving thread), reset after a 3 s warm-up, then `wrk -t1 -c8 -d{duration}`; the whole process's instructions")
print("(all threads) divided by the requests wrk made. The proxies forward to one mall-product outside valgrind.")
print("Instruction counts do not drift with the load on the shared cores as throughput does; they leave out")
print("what the kernel spends (system calls, TCP), which `gateway.sh`'s CPU-per-request column includes.\n")
print("| path | requests | instructions per request | / nginx's |\n|---|---:|---:|---:|")
for name, label in rows:
    print(f"| {label} | {counts[name][1]} | {per[name]:,.0f} | {per[name] / per['nginx']:.2f} |")
print(f"\nThe gateway spends **{per['gateway'] / per['nginx']:.2f}x** nginx's instructions on the same proxied request")
print(f"({per['gateway'] - per['nginx']:,.0f} more). hyper alone, with no layer and no telemetry, spends {per['bare'] / per['nginx']:.2f}x")
print(f"nginx's: the {per['gateway'] - per['bare']:,.0f} instructions the gateway spends above it are its own work (routing, auth,")
print("limits, the pool's stack, the span, the access line), not hyper's or tokio's. The sold-out answer costs")
print(f"{per['soldout'] / per['gateway404']:.2f} times the gateway's 404 (flashsale.sh's rejected-path reference; a late buyer's request is a POST with a body and")
print("three more header fields). With JSON log lines, the format the container images and Kubernetes manifests set,")
print(f"the gateway spends {per['gatewayjson'] / per['gateway']:.2f}x its compact-format count and the product {per['continuedjson'] / per['continued']:.2f}x;")
print("the other rows use the default compact format. Reproduce: `loadtest/instructions.sh`.")
PY
# Counts, not a time series: one bar per path.
"$PY" - "$RUN" "$RESULTS/instructions-$stamp.png" <<'PY' && printf '\n![instructions per request](%s)\n' "instructions-$stamp.png" >>"$report"
import os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
run, out = sys.argv[1:3]
paths = [("direct", "mall-product directly"), ("continued", "mall-product, trace continued"), ("continuedjson", "mall-product, trace continued, JSON"),
         ("gateway", "mall-gateway proxying"), ("gatewayjson", "mall-gateway proxying, JSON"), ("nginx", "nginx proxying"),
         ("bare", "hyper alone proxying"), ("gateway404", "mall-gateway, its own 404"), ("soldout", "mall-flashsale, sold out")]
values = []
for name, _ in paths:
    total, requests = open(os.path.join(run, f"{name}.count")).read().split()
    values.append(int(total) / int(requests))
fig, ax = plt.subplots(figsize=(9, 4.2))
ax.barh([label for _, label in paths], values, color=[f"C{i}" for i in range(len(paths))])
for y, v in enumerate(values):
    ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("instructions per request (callgrind, the whole process)")
fig.tight_layout()
fig.savefig(out, dpi=90)
PY
cp "$report" "$RESULTS/instructions-latest.md"
cat "$report"
say "report: $report"
