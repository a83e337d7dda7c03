#!/usr/bin/env bash
# bench/profile.sh — where does a proxy's time go per request?
#
# Puts inflight-proxy and nginx (proxy_pass, upstream keepalive) in turn in
# front of the same nginx `return 200` app, loads each with wrk (64
# connections, HTTP/1.1), samples the proxy process with `perf record -e
# cpu-clock` (software clock: works where hardware counters are not exposed)
# and prints CPU microseconds per request, split into kernel, the proxy's
# own code and shared libraries, then the proxy's hottest symbols.
# Same pinning as run.sh: app + proxy on SERVER_CPU, wrk on CLIENT_CPU.
#
# Usage: bench/profile.sh            (DURATION=5 seconds of sampling per proxy)
# Needs: wrk, nginx, perf (Debian: linux-perf); installs them with apt-get if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
BIN=${INFLIGHT_PROXY_BIN:-target/release/inflight-proxy}
PB=${BENCH_PORT_BASE:-18500}
APP=$((PB + 80)); PROXY=$((PB + 81)); ADMIN=$((PB + 82)); NGINX=$((PB + 83))

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v perf >/dev/null || need+=(linux-perf)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; fi
[ -x "$BIN" ] || cargo build --release -p inflight-proxy

WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

nginx_conf() { # name, server block
  cat >"$WORK/$1.conf" <<CONF
worker_processes 1; daemon off; pid $WORK/$1.pid; error_log $WORK/$1.err;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000;
  client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK; uwsgi_temp_path $WORK; scgi_temp_path $WORK;
  $2 }
CONF
}
nginx_conf app "server { listen 127.0.0.1:$APP; location / { return 200 'ok'; } }"
nginx_conf proxy "upstream app { server 127.0.0.1:$APP; keepalive 128; }
  server { listen 127.0.0.1:$NGINX; location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"

worker_of() { # the nginx worker whose master runs config $1
  for p in $(pgrep -f "nginx: worker"); do
    if grep -q "$1" "/proc/$(awk '{print $4}' "/proc/$p/stat")/cmdline" 2>/dev/null; then echo "$p"; return; fi
  done
}

taskset -c "$SERVER_CPU" nginx -c "$WORK/app.conf" & pids+=($!)
taskset -c "$SERVER_CPU" nginx -c "$WORK/proxy.conf" & pids+=($!)
taskset -c "$SERVER_CPU" "$BIN" --drain-period 0s --listen "127.0.0.1:$PROXY" \
  --admin-listen "127.0.0.1:$ADMIN" --upstream "127.0.0.1:$APP" >"$WORK/proxy.log" 2>&1 & pids+=($!)
PROXY_PID=$!
sleep 1
NGINX_PID=$(worker_of "$WORK/proxy.conf")

profile() { # label pid port
  local label=$1 pid=$2 port=$3
  taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d1s "http://127.0.0.1:$port/" >/dev/null
  taskset -c "$CLIENT_CPU" wrk -t1 -c64 -d"$((DURATION + 2))s" "http://127.0.0.1:$port/" >"$WORK/$label.wrk" &
  local wrk=$!
  sleep 1
  perf record -q -e cpu-clock -F 4000 -p "$pid" -o "$WORK/$label.data" -- sleep "$DURATION" >/dev/null 2>&1
  wait $wrk
  local rps; rps=$(awk '/Requests\/sec/{print $2}' "$WORK/$label.wrk")
  perf script -i "$WORK/$label.data" -F ip,dso 2>/dev/null | awk -v label="$label" -v rps="$rps" -v d="$DURATION" '
    { n++; if ($0 ~ /kernel/) k++; else if ($0 ~ /libc|ld-linux|libgcc|vdso/) l++; else u++ }
    END { per = 1e6 / 4000 / (rps * d);
          printf "%-15s %9.0f req/s  CPU per request: %5.1f us = kernel %5.1f + own code %4.1f + libc %4.1f\n",
                 label, rps, n * per, k * per, u * per, l * per }'
}
echo "CPU per request while serving wrk -c64 at full speed, $DURATION s of samples at 4 kHz:"
profile inflight-proxy "$PROXY_PID" "$PROXY"
profile nginx "$NGINX_PID" "$NGINX"
echo
echo "inflight-proxy: hottest symbols (share of its samples)"
perf report -i "$WORK/inflight-proxy.data" --no-children --sort dso,sym --stdio 2>/dev/null \
  | grep '%' | head -25 | sed 's/ \{2,\}/ /g' | cut -c1-150
