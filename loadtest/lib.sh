# Shared by the loadtest scenarios: tools, processes, measurements. Source it; do not run it.
# Everything listens on 127.0.0.1 and every measurement is bounded in time.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RESULTS="$ROOT/loadtest/results"
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONNECTIONS=${BENCH_CONNECTIONS:-"50 256"}
RUN=$(mktemp -d "${TMPDIR:-/tmp}/mall-bench.XXXXXX")
PIDS=()

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

cleanup() {
  sample_stop
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  [ -f "$RUN/nginx.pid" ] && kill -QUIT "$(cat "$RUN/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

ensure_tools() { # load generators a scenario uses (oha, wrk); python3 for the report always
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 && continue
    case $tool in
      oha)
        say "installing oha (cargo install oha --locked; a few minutes)"
        cargo install oha --locked
        ;;
      wrk)
        [ "$(id -u)" -eq 0 ] && apt-get install -y -qq wrk >/dev/null
        command -v wrk >/dev/null 2>&1 || { echo "install wrk (apt-get install wrk) and run again" >&2; exit 1; }
        ;;
    esac
  done
  command -v python3 >/dev/null 2>&1 || { echo "python3 is needed for the report" >&2; exit 1; }
  ensure_report_tools
}

ensure_report_tools() { # sets PY: a python with matplotlib (pinned in loadtest/requirements.txt)
  local venv
  venv=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")/loadtest-venv
  if ! cmp -s "$ROOT/loadtest/requirements.txt" "$venv/requirements.txt" 2>/dev/null; then
    say "report tools (matplotlib, pinned in loadtest/requirements.txt)"
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "python3 -m venv failed: apt-get install -y python3-venv" >&2; exit 1; }
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$ROOT/loadtest/requirements.txt"
    cp "$ROOT/loadtest/requirements.txt" "$venv/requirements.txt"
  fi
  PY=$venv/bin/python
}

# Time series for the charts: while a measurement runs, loadtest/timeline.py reads the /metrics
# of the mall processes in SAMPLE_URLS every second. SAMPLE_GROUP names the chart (one per group,
# each measurement a line labelled SAMPLE_LABEL, default the measurement's name).
SAMPLER=""
slug() { printf %s "$1" | tr -c 'A-Za-z0-9' '-' | tr -s '-'; }
sample_start() { # label
  [ -n "${SAMPLE_URLS:-}" ] && [ -n "${SAMPLE_GROUP:-}" ] || return 0
  local dir
  dir="$RUN/timelines/$(slug "$SAMPLE_GROUP")"
  mkdir -p "$dir"
  printf %s "$SAMPLE_GROUP" >"$dir/title"
  printf %s "$1" >"$dir/$(slug "$1").label"
  "$PY" "$ROOT/loadtest/timeline.py" sample "$dir/$(slug "$1").jsonl" $SAMPLE_URLS &
  SAMPLER=$!
}
sample_stop() {
  [ -n "$SAMPLER" ] || return 0
  kill -TERM "$SAMPLER" 2>/dev/null || true
  wait "$SAMPLER" 2>/dev/null || true
  SAMPLER=""
}

charts() { # scenario stamp : one PNG per sampled group into $RESULTS, and their Markdown links
  local scenario=$1 stamp=$2 dir png inputs
  [ -d "$RUN/timelines" ] || return 0
  echo
  echo "## Over time"
  echo
  echo "Answers per second and p50/p99 latency per second as the measured mall processes counted them"
  echo "(their \`/metrics\` read every second by \`loadtest/timeline.py\`; percentiles interpolated in the"
  echo "histogram's buckets). Round 1 where a scenario has rounds; nginx is seen through its upstream."
  for dir in "$RUN"/timelines/*/; do
    png="$scenario-$stamp-$(basename "$dir").png"
    inputs=()
    for f in "$dir"*.jsonl; do inputs+=("$f=$(cat "${f%.jsonl}.label")"); done
    "$PY" "$ROOT/loadtest/timeline.py" chart "$RESULTS/$png" "$scenario: $(cat "$dir/title")" "${inputs[@]}" &&
      printf '\n![%s](%s)\n' "$(cat "$dir/title")" "$png"
  done
}

ensure_ports_free() {
  local port
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port is in use; stop whatever listens there and run again" >&2
      exit 1
    fi
  done
}

build_and_deps() {
  "$ROOT/deploy/local/mall" deps
  say "building release binaries (and the load-generating examples)"
  # One build of bins and examples together: building examples separately resolves other
  # dependency features and rebuilds half the tree.
  (cd "$ROOT" && cargo build --release --locked --bins --examples)
}

wait_ready() { # url
  for ((i = 0; i < 240; i++)); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.25
  done
  echo "not ready: $1" >&2
  exit 1
}

start() { # name binary env... : runs a mall binary in the background, logging to $RUN/name.log
  local name=$1 bin=$2
  shift 2
  env "$@" "$ROOT/target/release/$bin" >"$RUN/$name.log" 2>&1 &
  PIDS+=($!)
}

one_upstream_gateway() { # listen-port upstream-port : sets GATEWAY_VARS, the gateway as the
  # proxy benchmarks run it: every pool on one upstream, its full default stack (tracing, metrics,
  # access log, auth), only the rate and concurrency limits raised so that neither can trigger
  local upstream=http://127.0.0.1:$2
  GATEWAY_VARS=(MALL_HTTP_ADDR=127.0.0.1:$1 MALL_UPSTREAM_PRODUCT=$upstream MALL_UPSTREAM_INVENTORY=$upstream
    MALL_UPSTREAM_ORDER=$upstream MALL_UPSTREAM_FLASHSALE=$upstream
    'MALL_GW_RATE_LIMITS=*:client:100000000/s' MALL_GW_MAX_CONCURRENCY=4096)
}

write_nginx_conf() { # file listen-port upstream-port top-level-directive... : nginx as an
  # equivalent keep-alive reverse proxy in front of one upstream, access log on
  local file=$1 port=$2 upstream=$3
  shift 3
  {
    printf '%s\n' "$@"
    cat <<NGINX
error_log $RUN/nginx-error.log warn;
events { worker_connections 8192; }
http {
  access_log $RUN/nginx-access.log;
  upstream product { server 127.0.0.1:$upstream; keepalive 512; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://product;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Request-Id \$request_id;
    }
  }
}
NGINX
  } >"$file"
}

warmup() { # connections oha-target-args...
  local c=$1
  shift
  oha -z "$WARMUP" -c "$c" --no-tui "$@" >/dev/null
}

stat_ticks() { # awk-expression pid... : that sum of /proc/<pid>/stat fields over the pids
  # (14 user, 15 system; clock ticks, all threads); the name field (2) of ours has no spaces
  local expr=$1 pid total=0 ticks
  shift
  for pid in "$@"; do
    ticks=$(awk "{print $expr}" "/proc/$pid/stat" 2>/dev/null || true)
    total=$((total + ${ticks:-0}))
  done
  echo "$total"
}
cpu_ticks() { stat_ticks '$14 + $15' "$@"; } # pid... : user + system CPU time so far
user_ticks() { stat_ticks '$14' "$@"; }      # pid... : user CPU time alone so far

# The server side's CPU time is measured along with each run when MEASURE_PIDS names the
# processes that serve it: on cores shared with the load generator, throughput also says how
# much CPU the rest of the machine left a server; this is what the server itself spent.
cpu_begin() {
  [ -n "${MEASURE_PIDS:-}" ] || return 0
  cpu_ticks $MEASURE_PIDS >"$RUN/cpu.begin"
  user_ticks $MEASURE_PIDS >"$RUN/cpu.user.begin"
}
cpu_end() { # file : writes the microseconds of CPU the servers spent in the run just made (and
  # of it in user space, to file.user: the kernel's share is the same for any proxy that makes
  # the same system calls)
  [ -n "${MEASURE_PIDS:-}" ] || return 0
  local hz
  hz=$(getconf CLK_TCK)
  echo "$((($(cpu_ticks $MEASURE_PIDS) - $(cat "$RUN/cpu.begin")) * 1000000 / hz))" >"$1"
  echo "$((($(user_ticks $MEASURE_PIDS) - $(cat "$RUN/cpu.user.begin")) * 1000000 / hz))" >"$1.user"
}

measure() { # name connections oha-target-args... : writes $RUN/name-c.json (and name-c.cpu)
  local name=$1 c=$2
  shift 2
  say "$name, $c connections, $DURATION"
  cpu_begin
  sample_start "${SAMPLE_LABEL:-$name}"
  oha -z "$DURATION" -c "$c" --no-tui --output-format json "$@" >"$RUN/$name-$c.json"
  sample_stop
  cpu_end "$RUN/$name-$c.cpu"
}

measure_wrk() { # name connections method url body header... : writes $RUN/name-c.json (and .cpu)
  # wrk with a script that only sets the request (so wrk stays on its fast path) and prints one
  # JSON line at the end; two threads, one per core.
  local name=$1 c=$2 method=$3 url=$4 body=$5
  shift 5
  python3 - "$RUN/$name.lua" "$method" "$body" "$@" <<'PY'
import json, sys
out, method, body, *headers = sys.argv[1:]
lines = [f"wrk.method = {json.dumps(method)}"]
if body:
    lines.append(f"wrk.body = {json.dumps(body)}")
for h in headers:
    k, v = h.split(":", 1)
    lines.append(f"wrk.headers[{json.dumps(k.strip())}] = {json.dumps(v.strip())}")
lines.append("""done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "seconds": %.6f, "non2xx": %d, "socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f}\\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end""")
open(out, "w").write("\n".join(lines) + "\n")
PY
  wrk -t 2 -c "$c" -d "$WARMUP" -s "$RUN/$name.lua" "$url" >/dev/null
  say "$name, $c connections, $DURATION (wrk)"
  cpu_begin
  sample_start "${SAMPLE_LABEL:-$name}"
  wrk -t 2 -c "$c" -d "$DURATION" -s "$RUN/$name.lua" "$url" | tail -n 1 >"$RUN/$name-$c.json"
  sample_stop
  cpu_end "$RUN/$name-$c.cpu"
}

# BENCH_REDIS=cluster runs a scenario on a Redis Cluster of its own: six redis-server nodes
# (three masters, a replica each) on BENCH_CLUSTER_PORT (17100) and the five ports after it,
# stopped with the scenario. Sets RCLI (redis-cli for the scenario's keys, following redirects),
# REDIS_MODE (single or cluster, the report's name suffix) and exports MALL_REDIS_CLUSTER_NODES.
REDIS_MODE=${BENCH_REDIS:-single}
RCLI=(redis-cli)
bench_redis() {
  case $REDIS_MODE in
    single) return 0 ;;
    cluster) ;;
    *) echo "BENCH_REDIS must be single or cluster" >&2; exit 2 ;;
  esac
  local base=${BENCH_CLUSTER_PORT:-17100} port addrs=() seeds=()
  say "a Redis Cluster of six nodes on ports $base-$((base + 5))"
  for port in $(seq "$base" $((base + 5))); do
    ensure_ports_free "$port" $((port + 10000))
    mkdir -p "$RUN/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 5000 --save "" --appendonly no --dir "$RUN/redis-$port" \
      --logfile "$RUN/redis-$port.log" &
    PIDS+=($!)
    addrs+=("127.0.0.1:$port")
    seeds+=("redis://127.0.0.1:$port")
  done
  for port in $(seq "$base" $((base + 5))); do
    for ((i = 0; i < 100; i++)); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$RUN/cluster-create.log"
  # Ready when every node serves every slot and each master has its replica.
  for port in $(seq "$base" $((base + 5))); do
    for ((i = 0; i < 300; i++)); do
      redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' &&
        [ "$(redis-cli -p "$port" cluster nodes | grep -c slave)" = 3 ] && break
      sleep 0.1
    done
  done
  RCLI=(redis-cli -c -p "$base")
  MALL_REDIS_CLUSTER_NODES=$(IFS=,; echo "${seeds[*]}")
  export MALL_REDIS_CLUSTER_NODES
}

owner_port() { # key : the port of the node serving it (the one Redis on a single node)
  if [ "$REDIS_MODE" = single ]; then echo 6379; return; fi
  local slot
  slot=$("${RCLI[@]}" cluster keyslot "$1")
  "${RCLI[@]}" cluster nodes | awk -v slot="$slot" '$3 ~ /master/ {
    for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n > 1 ? r[2] : r[1]);
      if (slot + 0 >= lo + 0 && slot + 0 <= hi + 0) { split($2, a, "[:@]"); print a[2]; exit } } }'
}

fresh_prefix() { # prefix schema... : drops a scenario's schemas (in $PG), Redis keys and queues
  local prefix=$1
  shift
  say "fresh schemas and keys under the prefix $prefix"
  for schema in "$@"; do
    psql "$PG" -qc "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
  done
  redis-cli --scan --pattern "$prefix:*" | xargs -r redis-cli del >/dev/null
  for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$prefix\." || true); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
}
