#!/usr/bin/env bash
# The aggregator benchmark: simulated pods streaming reports over loopback (aggregator/examples/load.rs).
#  1. ingest: the most reports/s one aggregator pinned to one core takes (load generator on the other core);
#     also reports per CPU-second of the aggregator, which is its capacity when the generator is the limit
#  2. memory: RSS per tracked pod, with 10,000 and 100,000 pods each reporting once a second
#  3. GetMetrics p50/p99 with 1,000 workloads while reports stream in
# Prints a Markdown table; `bench/aggregator.sh >> bench/RESULTS.md` keeps it.
#
# A/B against another build: INFLIGHT_AGGREGATOR_BIN=path/to/inflight-aggregator (the load
# generator is always this tree's), and AGGREGATOR_FLAGS for flags that build lacks (a build from
# before the --warm-up and --max-pods flags: AGGREGATOR_FLAGS="").
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" RUST_BACKTRACE=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inflight/target}"
SECONDS_EACH="${SECONDS_EACH:-10}"

cargo build --release --locked -p inflight-aggregator --bins --example load >&2
bin="$CARGO_TARGET_DIR/release"
aggregator="${INFLIGHT_AGGREGATOR_BIN:-$bin/inflight-aggregator}"
# No warm-up: the figures start at once. The 100,000-pod row is above the default --max-pods.
# No cluster to review report tokens with, nor the operator's certificates for the scaler port:
# --ingest-auth none, --scaler-auth none.
read -r -a flags <<<"${AGGREGATOR_FLAGS---warm-up 0s --max-pods 200000 --ingest-auth none --scaler-auth none}"
port=$((20000 + RANDOM % 20000))
agg_pid=
cleanup() {
    if [[ -n $agg_pid ]]; then
        kill "$agg_pid" 2>/dev/null || true
        wait "$agg_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

start() {
    cleanup
    port=$((port + 3))
    taskset -c 0 "$aggregator" --grpc-listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((port + 1))" \
        --scaler-listen "127.0.0.1:$((port + 2))" "${flags[@]}" \
        >/dev/null 2>&1 &
    agg_pid=$!
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return; sleep 0.05; done
    echo "aggregator did not start" >&2
    exit 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$agg_pid/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$agg_pid/stat"; }
load() { taskset -c 1 "$bin/examples/load" "$@" --target "http://127.0.0.1:$port"; }
# KEDA's calls go to the scaler port.
scaler_load() { taskset -c 1 "$bin/examples/load" "$@" --target "http://127.0.0.1:$((port + 2))"; }

echo "| measure | value | target |"
echo "| --- | ---: | ---: |"

start
ticks0=$(cpu_ticks)
out=$(load ingest --pods 10000 --workloads 1000 --streams 8 --seconds "$SECONDS_EACH")
ticks1=$(cpu_ticks)
accepted=$(echo "$out" | awk '{print $2}')
rate=$(echo "$out" | awk '{print $(NF-1)}')
hz=$(getconf CLK_TCK)
cpu=$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$hz" 'BEGIN {printf "%.2f", (b - a) / hz}')
per_core=$(awk -v n="$accepted" -v c="$cpu" 'BEGIN {printf "%.0f", n / c}')
echo "| reports/s ingested, aggregator pinned to 1 core (10k pods, 1k workloads, 8 streams, ${SECONDS_EACH} s) | $rate | ≥ 200000 |"
echo "| aggregator CPU during that run | ${cpu} s of ${SECONDS_EACH} s | – |"
echo "| reports per aggregator CPU-second | $per_core | ≥ 200000 |"

for pods in 10000 100000; do
    start
    base=$(rss_kib)
    load hold --pods "$pods" --workloads 1000 --streams 16 --seconds "$SECONDS_EACH" >/dev/null &
    load_pid=$!
    sleep $((SECONDS_EACH - 2))
    held=$(rss_kib)
    wait "$load_pid"
    per_pod=$(awk -v a="$base" -v b="$held" -v n="$pods" 'BEGIN {printf "%.0f", (b - a) * 1024 / n}')
    echo "| RSS per tracked pod, $pods pods (idle $((base / 1024)) MiB → $((held / 1024)) MiB) | $per_pod B | ≤ 2048 B |"
done

start
load hold --pods 10000 --workloads 1000 --streams 8 --seconds $((SECONDS_EACH + 5)) >/dev/null &
load_pid=$!
sleep 3
out=$(scaler_load latency --workloads 1000 --calls 20000)
wait "$load_pid"
p50=$(echo "$out" | sed -n 's/.*p50 \([0-9]*\) µs.*/\1/p')
p99=$(echo "$out" | sed -n 's/.*p99 \([0-9]*\) µs.*/\1/p')
echo "| GetMetrics p50 / p99, 1,000 workloads, 10k pods reporting each second | ${p50} µs / ${p99} µs | p99 ≤ 500 µs |"
