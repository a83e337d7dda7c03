#!/usr/bin/env bash
# bench/run.sh — how much does a reverse proxy in front of a tiny, fast app cost?
#
# Targets (each in front of the same app; "direct" is the app alone):
#   direct          the app: its own nginx, `return 200;`, HTTP/1.1 port and h2c port
#   inflight-proxy  this repository's sidecar (target/release/inflight-proxy), no --aggregator
#   inflight-activator  the activator with its workload up (the requests it forwards at once
#                   while a Service is not yet switched back to its pods), in front of the app as
#                   a ready pod; run by activator/examples/activator_bench.rs `serve` (the real
#                   library, its route and pod given on the command line instead of by Kubernetes)
#   nginx           nginx as reverse proxy: proxy_pass to the app with upstream keepalive
#   queue-proxy     Knative Serving's queue-proxy (knative.dev/serving/cmd/queue), standalone
#   interceptor     KEDA HTTP add-on interceptor, routing one host to the app, with its
#                   Kubernetes reads answered by bench/lib/fake-kube-api.py (static objects)
# Full set-up of each peer: bench/README.md and the "Set-up" section of RESULTS.md.
#
# Load, per protocol (HTTP/1.1 = "h1", HTTP/2 cleartext with prior knowledge = "h2c"):
#   max   maximum throughput, closed loop, $CONNS (64) connections:
#           h1  wrk (latency percentiles from wrk's own histogram, via bench/lib/wrk-report.lua)
#           h2c h2load -m $H2_STREAMS (10) concurrent streams per connection
#   rate  a fixed, moderate rate ($RATE req/s in total over $RATE_CONNS connections) with
#         h2load --rps (for h1 with --h1, i.e. HTTP/1.1 without pipelining). wrk2 is not in
#         Debian; h2load --rps paces each connection to a fixed request rate, which is sound at
#         a rate every target sustains (check the req/s column: it must equal $RATE). h2load
#         times each request from when it is actually sent, not from its scheduled time, so a
#         target that falls behind the rate would look better than it is (coordinated
#         omission); at a rate all targets keep up with that does not arise.
#   h2load latency percentiles come from its per-request --log-file.
#
# Fairness on 2 cores: unless PIN=0, the load generator is pinned (taskset) to CLIENT_CPUS
# (default CPU 1) and the server side — the app and the proxy under test — to SERVER_CPUS
# (default CPU 0). So every proxy competes with the app for the same one core, which is what
# a sidecar does, and the client never steals CPU from the proxy. Worker counts are matched
# to the server CPU set: nginx (app and proxy) worker_processes = number of SERVER_CPUS; the Go
# peers size GOMAXPROCS from their CPU affinity and inflight-proxy (tokio) sizes its worker
# pool from it likewise. Access logs and request logs are off everywhere.
#
# Rounds: ROUNDS rounds; each round runs every target once per protocol, in an order rotated
# by one each round, so machine drift hits all targets alike. Each (round, protocol, target)
# starts the proxy fresh, sends one probe request, warms up for WARMUP seconds at full load,
# then runs the measured "max" and "rate" runs. Per measured run it records requests/s (2xx
# responses / seconds), p50/p99, the proxy's peak RSS (VmHWM, reset through clear_refs before
# each run) and CPU (utime+stime from /proc/PID/stat, delta over the run). RESULTS.md shows
# medians over rounds. At the end, each proxy's RSS idle and with IDLE_CONNS (1000) idle
# client connections (bench/lib/idle-conns.py, plain Python sockets).
#
# Other work on the machine: before each (round, protocol, target) unit the script waits
# (bounded: QUIET_WAIT s per unit, QUIET_BUDGET s in all) until other processes use < 5% of a
# CPU. Each run records "foreign" CPU: CPU time of every process that is not the script, the
# app, the proxy, the API stand-in or the load generator (bench/lib/cpu-others.py). A unit
# in which others used more than DISTURBED_PCT (2) % of the machine is repeated RETRY_DISTURBED (1) time(s) while the quiet
# budget lasts, then kept and flagged in RESULTS.md.
#
# Everything listens on 127.0.0.1, except queue-proxy and the interceptor, whose listeners
# are hard-coded to all interfaces (queue-proxy also always opens :8022 and :9090); all
# traffic is loopback. Every wait is bounded; all processes started are stopped on exit.
#
# Usage:  bench/run.sh                 full run (~14 min on a quiet 2-core machine once the Go
#                                      peers are built; the first build takes a few minutes)
#         QUICK=1 bench/run.sh         smoke run (1 round, 3 s runs)
# Knobs (environment): DURATION=10 ROUNDS=3 WARMUP=2 CONNS=64 H2_STREAMS=10 RATE=2000
#   RATE_CONNS=10 IDLE_CONNS=1000 TARGETS="direct inflight-proxy nginx queue-proxy interceptor"
#   PROTOCOLS="h1 h2c" MODES="max rate" PIN=1 SERVER_CPUS=0 CLIENT_CPUS=1 OUT=bench/RESULTS.md
#   BENCH_PORT_BASE=18000 (ports 18080..18141 are used) INFLIGHT_PROXY_BIN=... BUILD_INFLIGHT=1
#   BENCH_CACHE=$HOME/.cache/inflight/bench KEEP_WORK=0 (1 keeps logs in the work dir)
#   QUIET_WAIT=30 QUIET_BUDGET=240 DISTURBED_PCT=2 RETRY_DISTURBED=1
# Needs: Debian (bookworm) with apt-get for wrk, nghttp2-client (h2load), nginx, curl,
# python3 (installed if missing); Go for the two Go peers (built once, cached per version);
# cargo for inflight-proxy (`cargo build --release -p inflight-proxy`).

set -u -o pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
LIB=$BENCH_DIR/lib

# ---------------------------------------------------------------- settings
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  : "${DURATION:=3}" "${ROUNDS:=1}" "${WARMUP:=1}"
fi
DURATION=${DURATION:-10}; DURATION=${DURATION%s}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}; WARMUP=${WARMUP%s}
CONNS=${CONNS:-64}
H2_STREAMS=${H2_STREAMS:-10}
RATE=${RATE:-2000}
RATE_CONNS=${RATE_CONNS:-10}
IDLE_CONNS=${IDLE_CONNS:-1000}
TARGETS=${TARGETS:-direct inflight-proxy inflight-activator nginx queue-proxy interceptor}
PROTOCOLS=${PROTOCOLS:-h1 h2c}
MODES=${MODES:-max rate}
OUT=${OUT:-$BENCH_DIR/RESULTS.md}
CACHE=${BENCH_CACHE:-$HOME/.cache/inflight/bench}
QUEUE_VERSION=${QUEUE_VERSION:-v0.50.0}
INTERCEPTOR_VERSION=${INTERCEPTOR_VERSION:-v0.15.0}
INFLIGHT_PROXY_BIN=${INFLIGHT_PROXY_BIN:-$ROOT/target/release/inflight-proxy}
INFLIGHT_ACTIVATOR_BIN=${INFLIGHT_ACTIVATOR_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/activator_bench}
BUILD_INFLIGHT=${BUILD_INFLIGHT:-1}
KEEP_WORK=${KEEP_WORK:-0}
GO_BUILD_TIMEOUT=${GO_BUILD_TIMEOUT:-900}
QUIET_WAIT=${QUIET_WAIT:-30}          # per unit: wait at most this long for other processes to go
QUIET_BUDGET=${QUIET_BUDGET:-240}     # in total
DISTURBED_PCT=${DISTURBED_PCT:-2}     # a run is disturbed when others used > this % of all CPUs
RETRY_DISTURBED=${RETRY_DISTURBED:-1} # repeat a disturbed unit this many times
H1_HOST=app.bench.local       # Host / :authority sent to every target (the interceptor routes on it)
H2_HOST=app-h2c.bench.local

for v in QUIET_WAIT QUIET_BUDGET DISTURBED_PCT RETRY_DISTURBED; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "run.sh: $v must be a non-negative integer (got '${!v}')" >&2; exit 2; }
done
for v in DURATION ROUNDS WARMUP CONNS H2_STREAMS RATE RATE_CONNS IDLE_CONNS; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || { echo "run.sh: $v must be a positive integer (got '${!v}')" >&2; exit 2; }
done
[ "$RATE_CONNS" -le "$RATE" ] || { echo "run.sh: RATE_CONNS must be <= RATE" >&2; exit 2; }

PB=${BENCH_PORT_BASE:-18000}
APP_H1=$((PB + 80)); APP_H2=$((PB + 81))
IP_PORT=$((PB + 100)); IP_ADMIN=$((PB + 101))
NG_H1=$((PB + 110)); NG_H2=$((PB + 111))
QP_PORT=$((PB + 120)); QP_TLS=$((PB + 121)); QP_FIXED_PORTS="8022 9090"
KI_PORT=$((PB + 130)); KI_ADMIN=$((PB + 131)); KI_METRICS=$((PB + 132))
KAPI_PORT=$((PB + 140))
IA_PORT=$((PB + 150)); IA_ADMIN=$((PB + 151))

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
export LC_ALL=C

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# ---------------------------------------------------------------- work dir, cleanup
if [ -d /dev/shm ] && [ -w /dev/shm ]; then WORK=$(mktemp -d /dev/shm/inflight-bench.XXXXXX)
else WORK=$(mktemp -d /tmp/inflight-bench.XXXXXX); fi
mkdir -p "$WORK/logs"
: >"$WORK/runs.tsv"; : >"$WORK/idle.tsv"; : >"$WORK/skip.tsv"; : >"$WORK/setup.txt"
PIDS=()

stop_pid() {  # stop_pid PID [grace seconds]: TERM, wait (bounded), then KILL; reap.
  local pid=$1 grace=${2:-3} i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  for ((i = 0; i < grace * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  return 0
}
cleanup() {
  local p
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
  done
  if [ "$KEEP_WORK" = 1 ]; then log "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

fg_run() {  # fg_run CMD...: run in the background and wait, so a signal interrupts it at once
  "$@" &
  local pid=$! rc
  PIDS+=("$pid")
  wait "$pid"; rc=$?
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
  return $rc
}
start_bg() {  # start_bg NAME CMD...: background, logs to $WORK/logs/NAME.log, sets BG_PID
  local name=$1; shift
  "$@" >"$WORK/logs/$name.log" 2>&1 &
  BG_PID=$!
  PIDS+=("$BG_PID")
}

# ---------------------------------------------------------------- tools
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
command -v ss >/dev/null || need+=(iproute2)
command -v pgrep >/dev/null || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  log "installing ${need[*]} with apt-get"
  $SUDO apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >"$WORK/logs/apt.log" 2>&1 \
    || { tail -20 "$WORK/logs/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
"$NGINX" -V 2>&1 | grep -q -- --with-http_v2_module || die "$NGINX lacks the http_v2 module"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
[ "$(ulimit -n)" -ge $((IDLE_CONNS * 3)) ] || log "warning: open-files limit $(ulimit -n) is low for $IDLE_CONNS idle connections"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------- CPU pinning
NPROC=$(nproc)
cpu_count() { python3 -c 'import sys
n=0
for p in sys.argv[1].split(","):
    a,_,b=p.partition("-"); n+= (int(b)-int(a)+1) if b else 1
print(n)' "$1"; }
PIN=${PIN:-1}
if [ "$PIN" = 1 ] && [ "$NPROC" -ge 2 ]; then
  SERVER_CPUS=${SERVER_CPUS:-0}; CLIENT_CPUS=${CLIENT_CPUS:-1}
  SRV=(taskset -c "$SERVER_CPUS"); CLI=(taskset -c "$CLIENT_CPUS")
  N_SRV=$(cpu_count "$SERVER_CPUS"); N_CLI=$(cpu_count "$CLIENT_CPUS")
  PIN_DESC="server side (app + proxy under test) pinned to CPU $SERVER_CPUS, load generator to CPU $CLIENT_CPUS (taskset)"
else
  SRV=(); CLI=(); N_SRV=$NPROC; N_CLI=$NPROC
  PIN_DESC="no pinning: client and servers share all $NPROC CPUs"
fi
CT=$N_CLI  # client threads
[ "$CT" -le "$RATE_CONNS" ] || CT=$RATE_CONNS

# ---------------------------------------------------------------- ports
port_busy() { [ -n "$(ss -ltnH "sport = :$1" 2>/dev/null)" ]; }
for p in $APP_H1 $APP_H2; do port_busy "$p" && die "port $p (app) is in use; set BENCH_PORT_BASE"; done

skip() { printf '%s\t%s\n' "$1" "$2" >>"$WORK/skip.tsv"; log "leaving out $1: $2"; TARGETS=$(echo " $TARGETS " | sed "s/ $1 / /; s/^ *//; s/ *$//"); }
want() { [[ " $TARGETS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- peers: build or find
mkdir -p "$CACHE"
GO_VER=$(go version 2>/dev/null | awk '{print $3}')
# go_build NAME MODULE VERSION SUBDIR OUTFILE: build MODULE/SUBDIR@VERSION once and cache it.
# First `go install MODULE/SUBDIR@VERSION`. That also asks the module proxy for the module's
# version list, to check for deprecation; where the list is not served (seen here: 403 from
# proxy.golang.org for github.com/kedacore/http-add-on) the install fails although the version
# itself downloads fine, so then build the same tagged source: `go mod download -json
# MODULE@VERSION`, copy its directory, `go build ./SUBDIR` with the module's own go.mod/go.sum.
# A BUILD_NOTE next to the binary says which way it was built.
go_build() {
  local name=$1 mod=$2 ver=$3 sub=$4 out=$5 tmp src why first
  [ -x "$out" ] && return 0
  command -v go >/dev/null || { BUILD_ERR="go is not installed"; return 1; }
  tmp=$(mktemp -d "$WORK/go-$name.XXXX")
  log "building $mod/$sub@$ver (once; cached in $(dirname "$out"))"
  if (cd "$tmp" && GOFLAGS=-mod=mod GOBIN="$tmp/bin" timeout "$GO_BUILD_TIMEOUT" go install "$mod/$sub@$ver") >"$WORK/logs/build-$name.log" 2>&1; then
    mkdir -p "$(dirname "$out")" && mv "$tmp/bin/$(basename "$sub")" "$out" || return 1
    echo "\`go install $mod/$sub@$ver\`, GOFLAGS=-mod=mod" >"$(dirname "$out")/BUILD_NOTE"
    return 0
  fi
  first=$(grep -v '^go: downloading' "$WORK/logs/build-$name.log" | tail -3 | tr '\n' ' ')
  log "go install failed ($first); building the same version from its module source"
  src=$( (cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$mod@$ver") 2>>"$WORK/logs/build-$name.log" \
         | python3 -c 'import json,sys; print(json.load(sys.stdin).get("Dir",""))' 2>/dev/null)
  if [ -n "$src" ] && cp -r "$src" "$tmp/src" && chmod -R u+w "$tmp/src" \
     && (cd "$tmp/src" && GOFLAGS=-mod=mod timeout "$GO_BUILD_TIMEOUT" go build -trimpath -o "$tmp/$name" "./$sub") >>"$WORK/logs/build-$name.log" 2>&1; then
    mkdir -p "$(dirname "$out")" && mv "$tmp/$name" "$out" || return 1
    why=$(echo "$first" | grep -o 'reading [^ ]*: [0-9][0-9][0-9] [A-Za-z ]*' | head -1)
    echo "\`go install $mod/$sub@$ver\` failed (${why:-see the build log}; go install reads the module's version list to check for deprecation), so built from the same tagged module source: \`go mod download $mod@$ver\`, then \`go build ./$sub\` with the module's own go.mod/go.sum, GOFLAGS=-mod=mod" >"$(dirname "$out")/BUILD_NOTE"
    return 0
  fi
  BUILD_ERR="go install $mod/$sub@$ver failed: $first; building from the module source failed too: $(tail -3 "$WORK/logs/build-$name.log" | tr '\n' ' ')"
  return 1
}
QUEUE_BIN=$CACHE/queue-$QUEUE_VERSION/queue
INTERCEPTOR_BIN=$CACHE/interceptor-$INTERCEPTOR_VERSION/interceptor
if want queue-proxy; then
  go_build queue knative.dev/serving "$QUEUE_VERSION" cmd/queue "$QUEUE_BIN" || skip queue-proxy "$BUILD_ERR"
fi
if want interceptor; then
  go_build interceptor github.com/kedacore/http-add-on "$INTERCEPTOR_VERSION" interceptor "$INTERCEPTOR_BIN" || skip interceptor "$BUILD_ERR"
fi
build_note() { cat "$(dirname "$1")/BUILD_NOTE" 2>/dev/null || echo "cached binary $1"; }
QUEUE_BUILD_NOTE=$(build_note "$QUEUE_BIN")
INTERCEPTOR_BUILD_NOTE=$(build_note "$INTERCEPTOR_BIN")

if want inflight-proxy; then
  if [ "$BUILD_INFLIGHT" = 1 ] && [ -f "$ROOT/sidecar/Cargo.toml" ] && command -v cargo >/dev/null \
     && [ "$INFLIGHT_PROXY_BIN" = "$ROOT/target/release/inflight-proxy" ]; then
    log "cargo build --release -p inflight-proxy"
    if ! (cd "$ROOT" && timeout "${CARGO_BUILD_TIMEOUT:-1800}" cargo build --release -p inflight-proxy) >"$WORK/logs/build-inflight.log" 2>&1; then
      skip inflight-proxy "cargo build --release -p inflight-proxy failed: $(grep -E '^error' "$WORK/logs/build-inflight.log" | head -3 | tr '\n' ' ')"
    fi
  fi
  if want inflight-proxy && [ ! -x "$INFLIGHT_PROXY_BIN" ]; then
    if [ -f "$ROOT/sidecar/Cargo.toml" ]; then skip inflight-proxy "$INFLIGHT_PROXY_BIN does not exist (cargo missing or BUILD_INFLIGHT=0)"
    else skip inflight-proxy "the sidecar crate (sidecar/Cargo.toml) does not exist yet"; fi
  fi
fi
if want inflight-activator; then
  if [ "$BUILD_INFLIGHT" = 1 ] && command -v cargo >/dev/null; then
    log "cargo build --release -p inflight-activator --example activator_bench"
    if ! (cd "$ROOT" && timeout "${CARGO_BUILD_TIMEOUT:-1800}" cargo build --release -p inflight-activator --example activator_bench) >"$WORK/logs/build-activator.log" 2>&1; then
      skip inflight-activator "cargo build --release -p inflight-activator --example activator_bench failed: $(grep -E '^error' "$WORK/logs/build-activator.log" | head -3 | tr '\n' ' ')"
    fi
  fi
  if want inflight-activator && [ ! -x "$INFLIGHT_ACTIVATOR_BIN" ]; then
    skip inflight-activator "$INFLIGHT_ACTIVATOR_BIN does not exist (cargo missing or BUILD_INFLIGHT=0)"
  fi
  if want inflight-activator; then for p in $IA_PORT $IA_ADMIN; do port_busy "$p" && { skip inflight-activator "port $p is in use"; break; }; done; fi
fi
if want queue-proxy; then
  for p in $QP_PORT $QP_TLS $QP_FIXED_PORTS; do port_busy "$p" && { skip queue-proxy "port $p is in use (queue-proxy always listens on :8022 admin and :9090 metrics)"; break; }; done
fi
if want interceptor; then
  for p in $KI_PORT $KI_ADMIN $KI_METRICS $KAPI_PORT; do port_busy "$p" && { skip interceptor "port $p is in use"; break; }; done
fi
if want inflight-proxy; then for p in $IP_PORT $IP_ADMIN; do port_busy "$p" && { skip inflight-proxy "port $p is in use"; break; }; done; fi
if want nginx; then for p in $NG_H1 $NG_H2; do port_busy "$p" && { skip nginx "port $p is in use"; break; }; done; fi
echo "$TARGETS" >"$WORK/targets.txt"
[ -n "$TARGETS" ] || die "no targets left"

# ---------------------------------------------------------------- the app
nginx_common() {  # nginx_common NAME: the parts both nginx configs share
  cat <<EOF
worker_processes $N_SRV;
daemon off;
master_process on;
pid $WORK/$1.pid;
error_log $WORK/logs/$1-error.log warn;
events { worker_connections 16384; }
EOF
}
NGX_HTTP_COMMON="access_log off;
  keepalive_requests 100000000;   # default 1000 closes h2 connections h2load does not reopen
  keepalive_timeout 300s;
  client_body_temp_path $WORK/ngx-tmp/body; proxy_temp_path $WORK/ngx-tmp/proxy;
  fastcgi_temp_path $WORK/ngx-tmp/fcgi; uwsgi_temp_path $WORK/ngx-tmp/uwsgi; scgi_temp_path $WORK/ngx-tmp/scgi;"
mkdir -p "$WORK/ngx-tmp"
{ nginx_common app; cat <<EOF
http {
  $NGX_HTTP_COMMON
  # Probe requests (header X-Bench-Probe, sent once per target start) are logged with the
  # protocol they arrived in, to show what each proxy speaks upstream; all else is not logged.
  map \$http_x_bench_probe \$bench_probe { default 0; ~. 1; }
  log_format probe '\$http_x_bench_probe \$server_port \$server_protocol';
  server {
    listen 127.0.0.1:$APP_H1;
    listen 127.0.0.1:$APP_H2 http2;   # nginx 1.22: a plain "http2" listener speaks h2c (prior knowledge) only
    access_log $WORK/logs/app-probe.log probe if=\$bench_probe;
    location / { return 200; }
  }
}
EOF
} >"$WORK/app.conf"
"$NGINX" -t -q -e "$WORK/logs/app-error.log" -p "$WORK" -c "$WORK/app.conf" 2>"$WORK/logs/app-t.log" || { cat "$WORK/logs/app-t.log" >&2; die "app nginx config invalid"; }
start_bg app "${SRV[@]}" "$NGINX" -e "$WORK/logs/app-error.log" -p "$WORK" -c "$WORK/app.conf"
APP_PID=$BG_PID

# ---------------------------------------------------------------- helpers: probing, measuring
PROBE_N=0
probe() {  # probe PROTO PORT -> 0 if a 200 came back; sets PROBE_UP (protocol the app saw)
  local proto=$1 port=$2 host code id
  PROBE_N=$((PROBE_N + 1)); id="p$PROBE_N-$RANDOM"
  if [ "$proto" = h2c ]; then host=$H2_HOST; else host=$H1_HOST; fi
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --noproxy '*' \
         $([ "$proto" = h2c ] && echo --http2-prior-knowledge) \
         -H "Host: $host" -H "X-Bench-Probe: $id" "http://127.0.0.1:$port/" 2>/dev/null)
  PROBE_UP=$(awk -v id="$id" '$1 == id { print $3 " to :" $2 }' "$WORK/logs/app-probe.log" 2>/dev/null | tail -1)
  [ "$code" = 200 ]
}
wait_ready() {  # wait_ready PROTO PORT PID TIMEOUT_S
  local proto=$1 port=$2 pid=$3 t=$4 i
  for ((i = 0; i < t * 10; i++)); do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then READY_ERR="exited during start-up"; return 1; fi
    probe "$proto" "$port" && return 0
    sleep 0.1
  done
  READY_ERR="no 200 through :$port within ${t}s"
  return 1
}
wait_url() {  # wait_url URL TIMEOUT_S: until 200
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 --noproxy '*' "$1")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}
wait_ready h1 "$APP_H1" "$APP_PID" 10 || die "app nginx did not start: $(tail -5 "$WORK/logs/app.log" "$WORK/logs/app-error.log")"
wait_ready h2c "$APP_H2" "$APP_PID" 10 || die "app nginx h2c port did not answer"

proc_pids() {  # the process and its children (nginx master + workers)
  [ -n "$1" ] || return 0
  echo "$1"; pgrep -P "$1" 2>/dev/null
}
cpu_ticks() { local t=0 p v; for p in "$@"; do v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}'); t=$((t + ${v:-0})); done; echo "$t"; }
hwm_kb() { local t=0 p v; for p in "$@"; do v=$(awk '/^VmHWM:/{print $2}' "/proc/$p/status" 2>/dev/null); t=$((t + ${v:-0})); done; echo "$t"; }
reset_hwm() { local p; for p in "$@"; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || HWM_RESET=no; done; }
HWM_RESET=yes
# CPU used by anything that is not this benchmark over a run ("foreign"): per-process
# utime/stime (+ reaped children) of every process that is not this shell or one of its
# descendants (app, proxy, API stand-in, load generator) — bench/lib/cpu-others.py.
snap() { python3 "$LIB/cpu-others.py" snap "$WORK/cpu-$1.json"; }

# ---------------------------------------------------------------- targets
write_nginx_proxy_conf() {
  { nginx_common ngproxy; cat <<EOF
http {
  $NGX_HTTP_COMMON
  upstream app_h1 {
    server 127.0.0.1:$APP_H1;
    keepalive 1024;                  # idle upstream connections kept per worker
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$NG_H1;
    listen 127.0.0.1:$NG_H2 http2;   # h2c in; nginx's proxy_pass speaks only HTTP/1.x upstream
    location / {
      proxy_pass http://app_h1;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
}
EOF
  } >"$WORK/ngproxy.conf"
}
write_nginx_proxy_conf

QP_ENV_DESC="CONTAINER_CONCURRENCY=0 QUEUE_SERVING_PORT=$QP_PORT QUEUE_SERVING_TLS_PORT=$QP_TLS USER_PORT=<app port> REVISION_TIMEOUT_SECONDS=300 SERVING_LOGGING_CONFIG=<Knative's default zap JSON> SERVING_LOGGING_LEVEL=info SERVING_NAMESPACE=bench SERVING_SERVICE=app SERVING_CONFIGURATION=app SERVING_REVISION=app-00001 SERVING_POD=app-00001-deployment-bench SERVING_POD_IP=127.0.0.1 SERVING_READINESS_PROBE={\"tcpSocket\":{\"port\":<app port>,\"host\":\"127.0.0.1\"},\"successThreshold\":1}"
QP_LOGGING_CONFIG='{"level":"info","development":false,"outputPaths":["stdout"],"errorOutputPaths":["stderr"],"encoding":"json","encoderConfig":{"timeKey":"timestamp","levelKey":"severity","nameKey":"logger","callerKey":"caller","messageKey":"message","stacktraceKey":"stacktrace","lineEnding":"","levelEncoder":"","timeEncoder":"iso8601","durationEncoder":"","callerEncoder":""}}'

KAPI_PID=
start_kube_api() {
  [ -n "$KAPI_PID" ] && kill -0 "$KAPI_PID" 2>/dev/null && return 0
  cat >"$WORK/kube-objects.json" <<EOF
[
 {"apiVersion": "http.keda.sh/v1beta1", "kind": "InterceptorRoute",
  "metadata": {"name": "app", "namespace": "1"},
  "spec": {"target": {"service": "127.0.0", "port": $APP_H1}, "rules": [{"hosts": ["$H1_HOST"]}],
           "scalingMetric": {"concurrency": {"targetValue": 100}}}},
 {"apiVersion": "http.keda.sh/v1beta1", "kind": "InterceptorRoute",
  "metadata": {"name": "app-h2c", "namespace": "1"},
  "spec": {"target": {"service": "127.0.0", "port": $APP_H2}, "rules": [{"hosts": ["$H2_HOST"]}],
           "scalingMetric": {"concurrency": {"targetValue": 100}}}},
 {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "127.0.0", "namespace": "1"},
  "spec": {"ports": [{"name": "http", "port": $APP_H1, "protocol": "TCP"},
                     {"name": "h2c", "port": $APP_H2, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}]}},
 {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
  "metadata": {"name": "app-bench", "namespace": "1", "labels": {"kubernetes.io/service-name": "127.0.0"}},
  "addressType": "IPv4",
  "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false}}],
  "ports": [{"name": "http", "port": $APP_H1, "protocol": "TCP"}, {"name": "h2c", "port": $APP_H2, "protocol": "TCP"}]}
]
EOF
  cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: bench, cluster: {server: "http://127.0.0.1:$KAPI_PORT"}}]
users: [{name: bench, user: {}}]
contexts: [{name: bench, context: {cluster: bench, user: bench}}]
current-context: bench
EOF
  start_bg kube-api "${SRV[@]}" python3 "$LIB/fake-kube-api.py" --port "$KAPI_PORT" --objects "$WORK/kube-objects.json" \
    --log "$WORK/logs/kube-api-requests.log" --lifetime 7200
  KAPI_PID=$BG_PID
  wait_url "http://127.0.0.1:$KAPI_PORT/version" 10
}

# start_target TARGET PROTO [TAG] -> sets T_PID (main pid, empty for direct), T_PORT, T_ERR
start_target() {
  local t=$1 proto=$2 tag=${3:-} up name
  if [ "$proto" = h2c ]; then up=$APP_H2; else up=$APP_H1; fi
  name="$t-$proto$tag"
  T_PID=; T_ERR=
  case $t in
    direct)
      T_PORT=$up ;;
    inflight-proxy)
      T_PORT=$IP_PORT
      start_bg "$name" "${SRV[@]}" "$INFLIGHT_PROXY_BIN" --listen "127.0.0.1:$IP_PORT" --admin-listen "127.0.0.1:$IP_ADMIN" --upstream "127.0.0.1:$up"
      T_PID=$BG_PID
      wait_url "http://127.0.0.1:$IP_ADMIN/readyz" 20 || { T_ERR="admin /readyz on :$IP_ADMIN not 200 within 20s"; return 1; } ;;
    inflight-activator)
      T_PORT=$IA_PORT
      # The pod is the app itself, listed ready: what is measured is the activator's hop.
      start_bg "$name" "${SRV[@]}" "$INFLIGHT_ACTIVATOR_BIN" serve --listen "127.0.0.1:$IA_PORT" --admin-listen "127.0.0.1:$IA_ADMIN" \
        --pod "127.0.0.1:$up,127.0.0.1:$IA_ADMIN,ready" --host "$H1_HOST" --host "$H2_HOST" --threads "$N_SRV"
      T_PID=$BG_PID
      wait_url "http://127.0.0.1:$IA_ADMIN/readyz" 20 || { T_ERR="admin /readyz on :$IA_ADMIN not 200 within 20s"; return 1; } ;;
    nginx)
      if [ "$proto" = h2c ]; then T_PORT=$NG_H2; else T_PORT=$NG_H1; fi
      start_bg "$name" "${SRV[@]}" "$NGINX" -e "$WORK/logs/ngproxy-error.log" -p "$WORK" -c "$WORK/ngproxy.conf"
      T_PID=$BG_PID ;;
    queue-proxy)
      T_PORT=$QP_PORT
      start_bg "$name" env CONTAINER_CONCURRENCY=0 QUEUE_SERVING_PORT="$QP_PORT" QUEUE_SERVING_TLS_PORT="$QP_TLS" \
        USER_PORT="$up" REVISION_TIMEOUT_SECONDS=300 \
        SERVING_LOGGING_CONFIG="$QP_LOGGING_CONFIG" SERVING_LOGGING_LEVEL=info \
        SERVING_NAMESPACE=bench SERVING_SERVICE=app SERVING_CONFIGURATION=app SERVING_REVISION=app-00001 \
        SERVING_POD=app-00001-deployment-bench SERVING_POD_IP=127.0.0.1 \
        SERVING_READINESS_PROBE="{\"tcpSocket\":{\"port\":$up,\"host\":\"127.0.0.1\"},\"successThreshold\":1}" \
        "${SRV[@]}" "$QUEUE_BIN"
      T_PID=$BG_PID ;;
    interceptor)
      T_PORT=$KI_PORT
      start_kube_api || { T_ERR="static Kubernetes API (bench/lib/fake-kube-api.py) did not start"; return 1; }
      start_bg "$name" env KUBECONFIG="$WORK/kubeconfig" KEDA_HTTP_PROXY_PORT="$KI_PORT" KEDA_HTTP_ADMIN_PORT="$KI_ADMIN" \
        OTEL_PROM_EXPORTER_PORT="$KI_METRICS" "${SRV[@]}" "$INTERCEPTOR_BIN"
      T_PID=$BG_PID
      wait_url "http://127.0.0.1:$KI_ADMIN/readyz" 30 || { T_ERR="admin /readyz on :$KI_ADMIN not 200 within 30s"; return 1; } ;;
    *) T_ERR="unknown target"; return 1 ;;
  esac
  wait_ready "$proto" "$T_PORT" "$T_PID" 20 || { T_ERR=$READY_ERR; return 1; }
  T_UP=$PROBE_UP
  return 0
}
stop_target() {
  [ -n "$T_PID" ] || return 0
  # queue-proxy and the interceptor drain on TERM for 30 s / 5 s+ (Kubernetes endpoint
  # propagation); nothing is in flight here, so after 2 s they are killed.
  stop_pid "$T_PID" 2
  T_PID=
}

# ---------------------------------------------------------------- load runs
# run_load MODE PROTO PORT SECONDS -> R_RPS R_P50 R_P99 R_REQ R_ERR (R_ERR_MSG on failure)
run_load() {
  local mode=$1 proto=$2 port=$3 secs=$4 host out lf
  if [ "$proto" = h2c ]; then host=$H2_HOST; else host=$H1_HOST; fi
  out=$WORK/client.out; lf=$WORK/h2load.log
  rm -f "$lf"
  R_ERR_MSG=
  if [ "$mode" = max ] && [ "$proto" = h1 ]; then
    fg_run timeout $((secs + 30)) "${CLI[@]}" wrk -t "$CT" -c "$CONNS" -d "${secs}s" --timeout 10s -s "$LIB/wrk-report.lua" \
      -H "Host: $host" "http://127.0.0.1:$port/" >"$out" 2>&1
    snap after
    local line; line=$(grep '^RESULT ' "$out")
    [ -n "$line" ] || { R_ERR_MSG="wrk: $(tail -2 "$out" | tr '\n' ' ')"; return 1; }
    eval "$(echo "${line#RESULT }" | tr ' ' '\n' | sed 's/^/W_/')"
    R_REQ=$((W_requests - W_non2xx)); R_ERR=$((W_non2xx + W_errors))
    [ "$R_REQ" -gt 0 ] || { R_ERR_MSG="wrk got no 2xx response: ${line#RESULT }"; return 1; }
    R_RPS=$(awk -v n="$R_REQ" -v us="$W_duration_us" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
    R_P50=$W_p50_us; R_P99=$W_p99_us
    return 0
  fi
  local args=(-t "$CT" -D "$secs" --log-file "$lf" -H ":authority: $host")
  [ "$proto" = h1 ] && args+=(--h1)
  if [ "$mode" = max ]; then args+=(-c "$CONNS" -m "$([ "$proto" = h2c ] && echo "$H2_STREAMS" || echo 1)")
  else args+=(-c "$RATE_CONNS" -m 1 --rps "$((RATE / RATE_CONNS))"); fi
  fg_run timeout $((secs + 30)) "${CLI[@]}" h2load "${args[@]}" "http://127.0.0.1:$port/" >"$out" 2>&1
  snap after
  local fin s2xx done_
  fin=$(awk '/^finished in/ { sub("s,", "", $3); print $3 }' "$out")
  s2xx=$(awk '/^status codes:/ { print $3 }' "$out")
  done_=$(awk '/^requests:/ { print $6 }' "$out")
  [ -n "$fin" ] && [ -n "$s2xx" ] || { R_ERR_MSG="h2load: $(tail -3 "$out" | tr '\n' ' ')"; return 1; }
  R_REQ=$s2xx; R_ERR=$((done_ - s2xx))
  [ "$R_REQ" -gt 0 ] || { R_ERR_MSG="h2load got no 2xx response: $(grep -E '^(requests|status codes|finished)' "$out" | tr '\n' ' ')"; return 1; }
  R_RPS=$(awk -v n="$s2xx" -v s="$fin" 'BEGIN { printf "%.0f", n / s }')
  read -r R_P50 R_P99 _ < <(python3 "$LIB/report.py" h2load-pct "$lf")
  rm -f "$lf"
  return 0
}

record() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >>"$WORK/unit.tsv"; }

# ---------------------------------------------------------------- set-up description
{
  echo "app: nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') \`location / { return 200; }\`, worker_processes $N_SRV, listen 127.0.0.1:$APP_H1 (HTTP/1.1) and 127.0.0.1:$APP_H2 http2 (h2c prior knowledge only, nginx 1.22 cannot serve both on one plain port), access_log off, keepalive_requests 100000000."
  echo "direct: the client talks to the app's ports."
  echo "inflight-proxy: \`$INFLIGHT_PROXY_BIN --listen 127.0.0.1:$IP_PORT --admin-listen 127.0.0.1:$IP_ADMIN --upstream 127.0.0.1:<app port>\` (no --aggregator: no reporting); for h2c runs the upstream is the app's h2c port; ready = admin /readyz 200."
  echo "inflight-activator: \`$INFLIGHT_ACTIVATOR_BIN serve --listen 127.0.0.1:$IA_PORT --admin-listen 127.0.0.1:$IA_ADMIN --pod 127.0.0.1:<app port>,…,ready --host $H1_HOST --host $H2_HOST --threads $N_SRV\` (activator/examples/activator_bench.rs: the activator library with one route and the app as its one ready pod, no --aggregator); the requests it forwards at once while a workload is up."
  echo "nginx: its own nginx, worker_processes $N_SRV, listen 127.0.0.1:$NG_H1 and 127.0.0.1:$NG_H2 http2, \`proxy_pass http://app_h1\` with \`proxy_http_version 1.1\`, \`proxy_set_header Connection \"\"\`, upstream \`keepalive 1024\`; nginx's proxy module cannot speak h2c upstream, so its h2c runs are h2c in, HTTP/1.1 keep-alive out."
  echo "queue-proxy: knative.dev/serving/cmd/queue@$QUEUE_VERSION ($QUEUE_BUILD_NOTE), run with env $QP_ENV_DESC. No OBSERVABILITY_CONFIG, so Knative's defaults: request metrics and tracing off, no request log. CONTAINER_CONCURRENCY=0 (Knative's default) means no breaker/queue. It serves h1 and h2c on one port and forwards h2c requests with h2c (auto transport), so USER_PORT is the app's h2c port for h2c runs. Its main port binds all interfaces and it always opens :8022 (admin) and :9090 (autoscaler metrics) — hard-coded."
  echo "interceptor: github.com/kedacore/http-add-on/interceptor@$INTERCEPTOR_VERSION ($INTERCEPTOR_BUILD_NOTE), env KUBECONFIG=<kubeconfig for http://127.0.0.1:$KAPI_PORT> KEDA_HTTP_PROXY_PORT=$KI_PORT KEDA_HTTP_ADMIN_PORT=$KI_ADMIN OTEL_PROM_EXPORTER_PORT=$KI_METRICS, everything else default. It has no static routing option: its routing table and endpoint-readiness cache come only from the Kubernetes API (InterceptorRoute, HTTPScaledObject, EndpointSlice, Service informers). bench/lib/fake-kube-api.py answers those LIST/WATCH reads from four static objects: InterceptorRoute \`1/app\` (host $H1_HOST → service \`127.0.0\` port $APP_H1), InterceptorRoute \`1/app-h2c\` (host $H2_HOST → port $APP_H2), Service \`1/127.0.0\` (port $APP_H2 has appProtocol kubernetes.io/h2c, which makes the interceptor use h2c upstream) and a ready EndpointSlice for it. The interceptor builds its upstream address as \`<service>.<namespace>:<port>\`, so service \`127.0.0\` in namespace \`1\` yields 127.0.0.1:<port> without DNS or /etc/hosts changes. The API stand-in is not on the request path (the interceptor serves from its informer caches). Clients send Host $H1_HOST (h1) / :authority $H2_HOST (h2c) to every target."
  echo "$PIN_DESC. Client threads: $CT. HWM reset before each measured run: see facts."
} >"$WORK/setup.txt"

# wait_quiet: before each unit, wait (bounded by QUIET_WAIT per unit and QUIET_BUDGET in
# total) until other processes use < 5% of one CPU for 2 seconds in a row.
QUIET_LEFT=$QUIET_BUDGET
wait_quiet() {
  local quiet=0 waited=0 f top
  while [ "$waited" -lt "$QUIET_WAIT" ] && [ "$QUIET_LEFT" -gt 0 ]; do
    read -r f top < <(python3 "$LIB/cpu-others.py" window 1 $$)
    if awk -v f="$f" 'BEGIN { exit !(f < 0.05) }'; then quiet=$((quiet + 1)); [ "$quiet" -ge 2 ] && return 0; else quiet=0; fi
    waited=$((waited + 1)); QUIET_LEFT=$((QUIET_LEFT - 1))
    [ $((waited % 10)) = 0 ] && log "waiting for other processes to leave the CPUs (${waited}s; busy: $top)"
  done
  return 0
}

# run_unit ROUND PROTO TARGET ORDER: fresh start, warm-up, measured runs; records to unit.tsv.
# Returns 1 when another process used more than DISTURBED_PCT % of the machine's CPU in a run.
run_unit() {
  local r=$1 proto=$2 t=$3 order=$4 m pids c0 c1 foreign ftop cpu hwm st rc disturbed=0
  if ! start_target "$t" "$proto" "-r$r"; then
    log "round $r $proto $t: start failed: $T_ERR"
    tail -5 "$WORK/logs/$t-$proto-r$r.log" 2>/dev/null | sed 's/^/    /' >&2
    for m in $MODES; do record "$r" "$proto" "$m" "$t" "start failed: $T_ERR" - - - - - - - - "$order" - -; done
    stop_target; return 0
  fi
  # warm-up at full load (not measured)
  run_load max "$proto" "$T_PORT" "$WARMUP" >/dev/null 2>&1
  for m in $MODES; do
    pids=($(proc_pids "$T_PID"))
    [ -n "$T_PID" ] && reset_hwm "${pids[@]}"
    snap before
    c0=$(cpu_ticks "${pids[@]}")
    run_load "$m" "$proto" "$T_PORT" "$DURATION"; rc=$?
    cp "$WORK/client.out" "$WORK/logs/client-r$r-$proto-$m-$t.out" 2>/dev/null
    c1=$(cpu_ticks "${pids[@]}")
    read -r foreign ftop < <(python3 "$LIB/cpu-others.py" diff "$WORK/cpu-before.json" "$WORK/cpu-after.json" $$)
    awk -v f="$foreign" -v lim="$(awk -v d="$DURATION" -v n="$NPROC" -v p="$DISTURBED_PCT" 'BEGIN { print d * n * p / 100 }')" \
      'BEGIN { exit !(f > lim) }' && disturbed=1
    if [ "$rc" = 0 ]; then
      if [ -n "$T_PID" ]; then
        cpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", d / hz }'); hwm=$(hwm_kb "${pids[@]}")
      else cpu=-; hwm=-; fi
      if [ -n "$T_PID" ] && ! kill -0 "$T_PID" 2>/dev/null; then st="proxy exited during the run"; else st=ok; fi
      record "$r" "$proto" "$m" "$t" "$st" "$R_RPS" "$R_P50" "$R_P99" "$hwm" "$cpu" "$R_REQ" "$R_ERR" "$T_UP" "$order" "$foreign" "$ftop"
      log "round $r $proto $m $t: ${R_RPS} req/s p50 ${R_P50}us p99 ${R_P99}us hwm ${hwm}KiB cpu ${cpu}s errors $R_ERR (upstream: $T_UP) foreign cpu ${foreign}s ($ftop)"
    else
      record "$r" "$proto" "$m" "$t" "client failed: $R_ERR_MSG" - - - - - - - - "$order" "$foreign" "$ftop"
      log "round $r $proto $m $t: client failed: $R_ERR_MSG (foreign cpu ${foreign}s)"
    fi
  done
  stop_target
  return $disturbed
}

# ---------------------------------------------------------------- the rounds
read -r -a TLIST <<<"$TARGETS"
NT=${#TLIST[@]}
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
awk '{ exit !($1 > 0.5) }' /proc/loadavg && log "warning: load average is $LOAD_START before the run; other work on this machine will skew the numbers"
log "targets: $TARGETS | protocols: $PROTOCOLS | modes: $MODES | rounds: $ROUNDS x ${DURATION}s (+${WARMUP}s warm-up) | $PIN_DESC"
T0=$(date +%s)
for ((r = 1; r <= ROUNDS; r++)); do
  for proto in $PROTOCOLS; do
    for ((k = 0; k < NT; k++)); do
      t=${TLIST[$(((k + r - 1) % NT))]}
      for ((attempt = 1; ; attempt++)); do
        wait_quiet
        : >"$WORK/unit.tsv"
        run_unit "$r" "$proto" "$t" $((k + 1)) && break
        if [ "$attempt" -gt "$RETRY_DISTURBED" ] || [ "$QUIET_LEFT" -le 0 ]; then
          log "round $r $proto $t: disturbed by other processes; keeping it (flagged in RESULTS.md)"; break
        fi
        log "round $r $proto $t: other processes used the CPU during the run; repeating it"
      done
      cat "$WORK/unit.tsv" >>"$WORK/runs.tsv"
    done
  done
done
log "load rounds took $(($(date +%s) - T0))s"

# ---------------------------------------------------------------- memory with idle connections
for t in $TARGETS; do
  [ "$t" = direct ] && continue
  if ! start_target "$t" h1 "-idle"; then
    printf '%s\t%s\t\n' "$t" "start failed: $T_ERR" >>"$WORK/idle.tsv"; stop_target; continue
  fi
  pidargs=(); for p in $(proc_pids "$T_PID"); do pidargs+=(--pid "$p"); done
  if res=$(timeout 120 "${CLI[@]}" python3 "$LIB/idle-conns.py" --port "$T_PORT" --count "$IDLE_CONNS" \
             --host-header "$H1_HOST" "${pidargs[@]}" 2>"$WORK/logs/idle-$t.err"); then
    printf '%s\tok\t%s\n' "$t" "$res" >>"$WORK/idle.tsv"
  elif [ -n "$res" ]; then
    printf '%s\tok\t%s\n' "$t" "$res" >>"$WORK/idle.tsv"   # some connections not answered: shown in the table
  else
    printf '%s\t%s\t\n' "$t" "idle-conns.py failed: $(tail -1 "$WORK/logs/idle-$t.err")" >>"$WORK/idle.tsv"
  fi
  log "idle $t: ${res:-failed}"
  stop_target
done

# ---------------------------------------------------------------- report
ver() { "$@" 2>&1 | head -1; }
inflight_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit yet")
inflight_sum=$([ -x "$INFLIGHT_PROXY_BIN" ] && sha256sum "$INFLIGHT_PROXY_BIN" | cut -c1-12 || echo -)
{
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'machine\t%s CPUs (nproc), %s, %s MiB RAM\n' "$NPROC" "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)" "$(awk '/^MemTotal/{print int($2/1024)}' /proc/meminfo)"
  printf 'kernel\t%s\n' "$(uname -sr)"
  printf 'os\t%s\n' "$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-unknown}")"
  printf 'pinning\t%s\n' "$PIN_DESC"
  printf 'load average\t%s before the runs, %s after (1/5/15 min)\n' "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)"
  printf 'settings\t%s rounds; per round and protocol every target once (order rotated); %ss warm-up, then %ss max + %ss fixed-rate runs; %s conns (h2c: x %s streams) for max; %s req/s over %s conns for fixed rate\n' \
    "$ROUNDS" "$WARMUP" "$DURATION" "$DURATION" "$CONNS" "$H2_STREAMS" "$RATE" "$RATE_CONNS"
  printf 'peak RSS\tVmHWM reset (clear_refs) before each measured run: %s\n' "$HWM_RESET"
  printf 'load generators\t%s; %s\n' "$(ver wrk -v | awk '{print $1, $2}')" "$(ver h2load --version)"
  printf 'nginx\t%s\n' "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
  printf 'inflight-proxy\t%s (repo commit %s, binary sha256 %s)\n' "$INFLIGHT_PROXY_BIN" "$inflight_rev" "$inflight_sum"
  printf 'inflight-activator\t%s (repo commit %s, binary sha256 %s)\n' "$INFLIGHT_ACTIVATOR_BIN" "$inflight_rev" \
    "$([ -x "$INFLIGHT_ACTIVATOR_BIN" ] && sha256sum "$INFLIGHT_ACTIVATOR_BIN" | cut -c1-12 || echo -)"
  printf 'queue-proxy\tknative.dev/serving/cmd/queue@%s, built with %s\n' "$QUEUE_VERSION" "${GO_VER:-?}"
  printf 'interceptor\tgithub.com/kedacore/http-add-on/interceptor@%s, built with %s\n' "$INTERCEPTOR_VERSION" "${GO_VER:-?}"
} >"$WORK/facts.tsv"
{
  printf 'duration\t%s\nncpu\t%s\n' "$DURATION" "$NPROC"
  printf 'conns\t%s\nh2_streams\t%s\nrate\t%s\nrate_conns\t%s\nidle_conns\t%s\n' "$CONNS" "$H2_STREAMS" "$RATE" "$RATE_CONNS" "$IDLE_CONNS"
} >"$WORK/settings.tsv"
mkdir -p "$(dirname "$OUT")"
python3 "$LIB/report.py" render "$WORK" "$OUT" || die "could not render the report"
cat "$OUT"
log "wrote $OUT (total $(($(date +%s) - T0))s of measuring)"
