#!/usr/bin/env bash
# bench/ab.sh — two (or more) builds of inflight-proxy at full speed, interleaved.
#
# On a shared machine the speed drifts over minutes by more than the difference between two
# builds, so builds are compared run by run: each round runs every build once per protocol, in
# turn, and the medians over rounds are printed. Same set-up as run.sh's max mode: nginx `return
# 200` as the app, app and proxy pinned to SERVER_CPU, the load generator to CLIENT_CPU; HTTP/1.1
# with wrk (CONNS connections), h2c with h2load (CONNS connections x 10 streams). CPU is the
# proxy's utime+stime per 100,000 requests.
#
#   bench/ab.sh BIN_A BIN_B [BIN ...]
#
# Knobs: ROUNDS=6 DURATION=8 CONNS=64 PROTOCOLS="h1 h2c" SERVER_CPU=0 CLIENT_CPU=1
# BENCH_PORT_BASE=18700. Needs wrk, h2load (nghttp2-client), nginx, curl.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-8}
CONNS=${CONNS:-64}
PROTOCOLS=${PROTOCOLS:-h1 h2c}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PB=${BENCH_PORT_BASE:-18700}
APP_H1=$((PB + 1)) APP_H2=$((PB + 2)) PROXY=$((PB + 3)) ADMIN=$((PB + 4))
[ $# -ge 2 ] || { echo "usage: bench/ab.sh BIN_A BIN_B [BIN ...]" >&2; exit 2; }

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v nginx >/dev/null || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi

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
taskset -c "$SERVER_CPU" nginx -c "$WORK/app.conf" &
pids+=($!)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run BIN PROTOCOL: prints "req/s cpu-s-per-100k"
run() {
    local bin=$1 protocol=$2 upstream=$APP_H1
    [ "$protocol" = h2c ] && upstream=$APP_H2
    taskset -c "$SERVER_CPU" "$bin" --listen "127.0.0.1:$PROXY" --admin-listen "127.0.0.1:$ADMIN" \
        --upstream "127.0.0.1:$upstream" --drain-period 0s >"$WORK/proxy.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" 2>/dev/null && break
        sleep 0.05
    done
    local load
    if [ "$protocol" = h1 ]; then
        load=(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PROXY/")
        taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$PROXY/" >/dev/null
    else
        load=(h2load -c"$CONNS" -m10 -D"$DURATION" "http://127.0.0.1:$PROXY/")
        taskset -c "$CLIENT_CPU" h2load -c"$CONNS" -m10 -D1 "http://127.0.0.1:$PROXY/" >/dev/null
    fi
    local t0 t1
    t0=$(cpu_ticks "$pid")
    taskset -c "$CLIENT_CPU" "${load[@]}" >"$WORK/load.out" 2>&1
    t1=$(cpu_ticks "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local requests
    if [ "$protocol" = h1 ]; then
        requests=$(awk '/requests in/ {print $1}' "$WORK/load.out")
        grep -q "Non-2xx" "$WORK/load.out" && requests=0
    else
        requests=$(awk '/^status codes:/ {print $3}' "$WORK/load.out")
    fi
    awk -v n="${requests:-0}" -v d="$DURATION" -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "%.0f %.3f\n", n / d, (n > 0 ? (b - a) / hz / n * 100000 : 0)}'
}

for ((r = 1; r <= ROUNDS; r++)); do
    for protocol in $PROTOCOLS; do
        for bin in "$@"; do
            printf '%s\t%s\t%s\n' "$bin" "$protocol" "$(run "$bin" "$protocol")" >>"$WORK/runs.tsv"
        done
    done
    echo "round $r of $ROUNDS done" >&2
done

echo "| proxy | protocol | req/s, median (min–max) | CPU s/100k, median (min–max) |"
echo "| --- | --- | ---: | ---: |"
for protocol in $PROTOCOLS; do
    for bin in "$@"; do
        awk -F'\t' -v b="$bin" -v p="$protocol" '$1 == b && $2 == p {split($3, f, " "); print f[1], f[2]}' \
            "$WORK/runs.tsv" | sort -n >"$WORK/rps"
        sort -k2 -n "$WORK/rps" >"$WORK/cpu"
        awk -v b="$bin ($(sha256sum "$bin" | cut -c1-12))" -v p="$protocol" '
            { r[NR] = $1; c[NR] = $2 }
            END { printf "| %s | %s | %d (%d–%d) |", b, p, r[int((NR + 1) / 2)], r[1], r[NR] }' "$WORK/rps"
        awk '{ c[NR] = $2 } END { printf " %.3f (%.3f–%.3f) |\n", c[int((NR + 1) / 2)], c[1], c[NR] }' "$WORK/cpu"
    done
done
