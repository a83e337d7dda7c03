#!/usr/bin/env bash
# The local demo, until the embedded cluster exists: inflight-proxy in front
# of the demo app (100 ms per request) under a generated load that rises and
# falls, with the proxy's live figures printed every second. By Little's law
# the requests in flight settle near rate x latency: 2 at 20/s, 20 at 200/s.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

APP_PORT="${APP_PORT:-18280}"
PROXY_PORT="${PROXY_PORT:-18281}"
ADMIN_PORT="${ADMIN_PORT:-18282}"
LATENCY="${LATENCY:-100ms}"
SCHEDULE="${SCHEDULE:-20:5s,200:10s,50:5s,0:3s}"

cargo build --release --locked -p inflight-proxy -p inflight-demo-app
bin="${CARGO_TARGET_DIR:-target}/release"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

"$bin/inflight-demo-app" serve --listen "127.0.0.1:$APP_PORT" --latency "$LATENCY" &
pids+=($!)
RUST_LOG=warn "$bin/inflight-proxy" --listen "127.0.0.1:$PROXY_PORT" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --upstream "127.0.0.1:$APP_PORT" \
    --workload deployment/demo &
pids+=($!)

for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT") 2>/dev/null; then
        break
    fi
    sleep 0.1
done

echo "demo app: 127.0.0.1:$APP_PORT ($LATENCY per request); inflight-proxy: 127.0.0.1:$PROXY_PORT, admin 127.0.0.1:$ADMIN_PORT"
echo "load schedule (requests/s:duration): $SCHEDULE"
"$bin/inflight-demo-app" load --target "http://127.0.0.1:$PROXY_PORT/" \
    --admin "127.0.0.1:$ADMIN_PORT" --schedule "$SCHEDULE"
echo
echo "the proxy's /stats at the end:"
exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT"
printf 'GET /stats HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
sed -n '/^\r$/,$p' <&3 | tail -n +2
echo
