#!/usr/bin/env bash
# bench/per-request.sh — the proxy's work per request, counted rather than timed.
#
# Throughput and CPU time on a shared 2-core machine drift with the host's load by more than the
# differences between two builds. Counts do not: this prints, per build and protocol, the proxy's
# user-space instructions per request (valgrind's callgrind over a fixed number of requests, after
# a warm-up, counters zeroed in between) and its system calls per request (perf's
# raw_syscalls:sys_enter tracepoint, the proxy run normally). The app is nginx `return 200`; the
# load is h2load with a fixed request count: HTTP/1.1 over CONNS keep-alive connections, h2c over
# CONNS connections x 10 streams.
#
#   bench/per-request.sh [PROXY_BIN ...]     default: this tree's release build
#
# Knobs: REQUESTS=20000 WARMUP=2000 CONNS=16 PROTOCOLS="h1 h2c" BENCH_PORT_BASE=18600.
# Needs valgrind, perf (linux-perf), nginx, h2load (nghttp2-client), curl; installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inflight/target}"

REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-2000}
CONNS=${CONNS:-16}
PROTOCOLS=${PROTOCOLS:-h1 h2c}
PB=${BENCH_PORT_BASE:-18600}
APP_H1=$((PB + 1)) APP_H2=$((PB + 2)) PROXY=$((PB + 3)) ADMIN=$((PB + 4))

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v perf >/dev/null || need+=(linux-perf)
command -v nginx >/dev/null || need+=(nginx)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi

bins=("$@")
if [ ${#bins[@]} -eq 0 ]; then
    cargo build --release --locked -p inflight-proxy >&2
    bins=("$CARGO_TARGET_DIR/release/inflight-proxy")
fi

WORK=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/app.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/app.pid; error_log $WORK/app.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000;
  client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK; uwsgi_temp_path $WORK; scgi_temp_path $WORK;
  server { listen 127.0.0.1:$APP_H1; location / { return 200 'ok'; } }
  server { listen 127.0.0.1:$APP_H2 http2; location / { return 200 'ok'; } } }
CONF
nginx -c "$WORK/app.conf" &
pids+=($!)

# load PROTOCOL COUNT: COUNT requests through the proxy, at most 60 s.
load() {
    local args=(-n "$2" -c "$CONNS")
    if [ "$1" = h1 ]; then args+=(--h1); else args+=(-m 10); fi
    timeout 600 h2load "${args[@]}" "http://127.0.0.1:$PROXY/" >"$WORK/h2load.out" 2>&1
    local ok
    ok=$(awk '/^status codes:/ {print $3}' "$WORK/h2load.out")
    if [ "${ok:-0}" -ne "$2" ]; then
        echo "per-request.sh: only ${ok:-0} of $2 requests answered 2xx:" >&2
        cat "$WORK/h2load.out" >&2
        exit 1
    fi
}

# start PROTOCOL BIN [WRAPPER...]: the proxy in front of the app's port for PROTOCOL; sets $proxy_pid.
start() {
    local protocol=$1 bin=$2
    shift 2
    local upstream=$APP_H1
    [ "$protocol" = h2c ] && upstream=$APP_H2
    "$@" "$bin" --listen "127.0.0.1:$PROXY" --admin-listen "127.0.0.1:$ADMIN" \
        --upstream "127.0.0.1:$upstream" --drain-period 0s >"$WORK/proxy.log" 2>&1 &
    proxy_pid=$!
    for _ in $(seq 600); do
        curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" 2>/dev/null && return
        sleep 0.1
    done
    echo "per-request.sh: the proxy did not become ready" >&2
    cat "$WORK/proxy.log" >&2
    exit 1
}

stop() {
    kill "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
}

echo "| proxy | protocol | instructions per request (user space) | system calls per request |"
echo "| --- | --- | ---: | ---: |"
for bin in "${bins[@]}"; do
    label="$bin ($(sha256sum "$bin" | cut -c1-12))"
    for protocol in $PROTOCOLS; do
        # Instructions: callgrind counts every instruction the proxy's threads run.
        start "$protocol" "$bin" valgrind -q --tool=callgrind --dump-instr=no \
            --callgrind-out-file="$WORK/callgrind.%p"
        load "$protocol" "$WARMUP"
        callgrind_control -z "$proxy_pid" >/dev/null 2>&1
        load "$protocol" "$REQUESTS"
        callgrind_control -d "$proxy_pid" >/dev/null 2>&1
        # That dump (callgrind.PID.1) holds the counted requests alone; the one written at exit,
        # what ran after it.
        instructions=$(awk '/^(summary|totals):/ {print $2; exit}' "$WORK/callgrind.$proxy_pid.1")
        stop
        rm -f "$WORK"/callgrind.*
        # System calls: the proxy at full speed, counted by the kernel's tracepoint.
        start "$protocol" "$bin"
        load "$protocol" "$WARMUP"
        perf stat -x, -e raw_syscalls:sys_enter -p "$proxy_pid" -o "$WORK/perf.out" &
        perf_pid=$!
        sleep 0.5
        load "$protocol" "$REQUESTS"
        kill -INT "$perf_pid"
        wait "$perf_pid" 2>/dev/null || true
        stop
        syscalls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$WORK/perf.out")
        awk -v l="$label" -v p="$protocol" -v i="$instructions" -v s="$syscalls" -v n="$REQUESTS" \
            'BEGIN {printf "| %s | %s | %.0f | %.2f |\n", l, p, i / n, s / n}'
    done
done
