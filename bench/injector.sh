#!/usr/bin/env bash
# The injector benchmark: what inflight-injector costs the API server in time and the cluster in
# memory, on loopback with the load generator injector/examples/review_load.rs.
#  1. latency: an open-loop load of RATE (1,000) AdmissionReviews/s for DURATION (30) s over TLS,
#     once per protocol: HTTP/1.1 over CONNS (4) keep-alive connections, and h2 over one connection
#     (as the API server calls webhooks). Each request's latency runs from the time it was due to
#     its answer, so a stall counts for every request it held up (no coordinated omission). The
#     pods are the golden fixtures injector/tests/fixtures/*.request.json, sent in turn (some are
#     pods the injector skips, as in a real namespace); the table shows how many
#     answers carried a patch. Each measured run follows WARMUP (5) s of the same load, not counted.
#  2. memory: the injector's RSS (VmRSS) idle after start, its peak (VmHWM) over the whole run,
#     warm-ups included, and its RSS idle after the load.
#  Also per run: the injector's CPU (utime+stime from /proc/PID/stat), its own review time
#  (inflight_injector_review_duration_seconds from /metrics: mean, and the bucket holding p99),
#  the CPU other processes on the machine used meanwhile (bench/lib/cpu-others.py), and the load
#  generator's own start delay (due time to the request handed to a connection) with the latency
#  left without it: a tail far above the injector's own review time comes from one of these.
# Prints a Markdown table; `bench/injector.sh >> bench/RESULTS.md` keeps it. The progress and the
# load generator's own output go to stderr. Targets (the injector's issue): p99 ≤ 2 ms, RSS ≤ 20 MiB.
#
# The injector runs with --native-sidecar always (no API server is asked), a self-signed certificate
# for 127.0.0.1 (made by review_load --write-cert; the load generator checks it with --ca) and
# RUST_LOG=info, as deployed. On 2 cores the injector is pinned (taskset) to SERVER_CPUS and the
# load generator to CLIENT_CPUS, so they never take CPU from each other; tokio sizes the injector's
# worker pool from its CPU affinity (one worker on one CPU). Other work on the machine shows in the
# tail latencies: run it on a quiet machine, or under `nice` beside other work and say so.
#
# Usage:  bench/injector.sh                 (~1.5 min after the build; the release build with fat LTO
#                                            takes 5-8 min the first time)
#         RATE=2000 DURATION=10 PROTOCOLS=h2 bench/injector.sh
# Knobs (environment): RATE=1000 DURATION=30 WARMUP=5 CONNS=4 PROTOCOLS="h1 h2" PIN=1
#   SERVER_CPUS=0 CLIENT_CPUS=1 BUILD=1 (0: use the binaries already built)
#   INFLIGHT_INJECTOR_BIN=path/to/inflight-injector (another build; the load generator is always
#   this tree's) INJECTOR_FLAGS (extra flags for it) KEEP_WORK=0 (1 keeps the certificate and the
#   injector's log)
# Needs: cargo, curl, python3, taskset (util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH" RUST_BACKTRACE=0
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inflight/target}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-30}"
DURATION="${DURATION%s}"
WARMUP="${WARMUP:-5}"
WARMUP="${WARMUP%s}"
CONNS="${CONNS:-4}"
PROTOCOLS="${PROTOCOLS:-h1 h2}"
PIN="${PIN:-1}"
SERVER_CPUS="${SERVER_CPUS:-0}"
CLIENT_CPUS="${CLIENT_CPUS:-1}"
BUILD="${BUILD:-1}"
KEEP_WORK="${KEEP_WORK:-0}"

if [[ $BUILD == 1 ]]; then
    echo "building inflight-injector and review_load (release)" >&2
    cargo build --release --locked -p inflight-injector --bin inflight-injector --example review_load >&2
fi
bin="$CARGO_TARGET_DIR/release"
injector="${INFLIGHT_INJECTOR_BIN:-$bin/inflight-injector}"
review_load="$bin/examples/review_load"
read -r -a extra_flags <<<"${INJECTOR_FLAGS:-}"

work=$(mktemp -d "${TMPDIR:-/tmp}/inflight-injector-bench.XXXXXX")
port=$((20000 + RANDOM % 20000))
admin=$((port + 1))
inj_pid=
cleanup() {
    if [[ -n $inj_pid ]]; then
        kill "$inj_pid" 2>/dev/null || true
        wait "$inj_pid" 2>/dev/null || true
    fi
    if [[ $KEEP_WORK == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

server_pin=() client_pin=()
if [[ $PIN == 1 ]]; then
    server_pin=(taskset -c "$SERVER_CPUS")
    client_pin=(taskset -c "$CLIENT_CPUS")
fi

"$review_load" --write-cert "$work" >/dev/null
RUST_LOG="${RUST_LOG:-info}" "${server_pin[@]}" "$injector" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
    --proxy-image inflight-proxy:bench --native-sidecar always "${extra_flags[@]}" \
    >"$work/injector.log" 2>&1 &
inj_pid=$!
for _ in $(seq 200); do
    curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz" 2>/dev/null && break
    if ! kill -0 "$inj_pid" 2>/dev/null; then
        echo "inflight-injector exited:" >&2
        cat "$work/injector.log" >&2
        exit 1
    fi
    sleep 0.05
done
curl -fsS -o /dev/null "http://127.0.0.1:$admin/readyz"

status_kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$inj_pid/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$inj_pid/stat"; }
hz=$(getconf CLK_TCK)
metrics() { curl -fsS "http://127.0.0.1:$admin/metrics" | grep '^inflight_injector_review_duration_seconds'; }
load() {
    "${client_pin[@]}" "$review_load" --target "https://127.0.0.1:$port/mutate" --ca "$work/cert.pem" \
        --rate "$RATE" --connections "$CONNS" "$@"
}
# The injector's own figures over a run, from two scrapes of its histogram: "mean_ms p99_bucket_ms".
server_side() {
    awk '
        FNR == 1 { file++ }
        /_count / { count[file] = $2 }
        /_sum / { sum[file] = $2 }
        /_bucket\{/ {
            le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le)
            if (file == 1) { n++; bound[n] = le }
            b[file, le] = $2
        }
        END {
            c = count[2] - count[1]
            if (c <= 0) { print "– –"; exit }
            p99 = "?"
            for (i = 1; i <= n; i++) {
                if (b[2, bound[i]] - b[1, bound[i]] >= 0.99 * c) {
                    p99 = (bound[i] == "+Inf") ? "+Inf" : sprintf("≤ %g", bound[i] * 1000)
                    break
                }
            }
            printf "%.3f %s\n", (sum[2] - sum[1]) / c * 1000, p99
        }' "$1" "$2"
}
field() { sed -n "s/.* $1 \([0-9]*\).*/\1/p" | head -n 1; }
ms() { awk -v u="$1" 'BEGIN {printf "%.2f", u / 1000}'; }

sleep 1
idle_before=$(status_kib VmRSS)
rows=()
for protocol in $PROTOCOLS; do
    case $protocol in
        h1) flags=() label="HTTP/1.1, $CONNS connections" ;;
        h2) flags=(--h2) label="h2, 1 connection" ;;
        *) echo "unknown protocol $protocol (h1, h2)" >&2; exit 1 ;;
    esac
    echo "== $label: warm-up ${WARMUP} s, then ${DURATION} s at $RATE/s" >&2
    load "${flags[@]}" --duration "${WARMUP}s" >/dev/null
    metrics >"$work/metrics.before"
    python3 bench/lib/cpu-others.py snap "$work/cpu.before"
    ticks0=$(cpu_ticks)
    load "${flags[@]}" --duration "${DURATION}s" >"$work/load.out"
    ticks1=$(cpu_ticks)
    python3 bench/lib/cpu-others.py snap "$work/cpu.after"
    metrics >"$work/metrics.after"
    cat "$work/load.out" >&2
    out=$(cat "$work/load.out")
    read -r others others_top < <(python3 bench/lib/cpu-others.py diff "$work/cpu.before" "$work/cpu.after" $$)
    read -r server_mean server_p99 < <(server_side "$work/metrics.before" "$work/metrics.after")
    lat=$(echo "$out" | grep '^latency µs from due')
    delay=$(echo "$out" | grep '^start delay')
    sent_lat=$(echo "$out" | grep '^latency µs from handed')
    sent=$(echo "$out" | sed -n 's/^sent \([0-9]*\) .*/\1/p')
    patched=$(echo "$out" | sed -n 's/.* patched \([0-9]*\) .*/\1/p')
    errors=$(echo "$out" | sed -n 's/.* errors \([0-9]*\) .*/\1/p')
    achieved=$(echo "$out" | sed -n 's/^achieved \([0-9.]*\) .*/\1/p')
    cpu=$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$hz" -v d="$DURATION" 'BEGIN {printf "%.1f", (b - a) / hz / d * 100}')
    rows+=("| $label: latency p50 / p90 / p99 / p99.9 / max | $(ms "$(echo "$lat" | field p50)") / $(ms "$(echo "$lat" | field p90)") / **$(ms "$(echo "$lat" | field p99)")** / $(ms "$(echo "$lat" | field p99.9)") / $(ms "$(echo "$lat" | field max)") ms | p99 ≤ 2 ms |")
    rows+=("| $label: of which the generator's own start delay, p50 / p99; latency without it, p50 / p99 | $(ms "$(echo "$delay" | field p50)") / $(ms "$(echo "$delay" | field p99)") ms; $(ms "$(echo "$sent_lat" | field p50)") / $(ms "$(echo "$sent_lat" | field p99)") ms | – |")
    rows+=("| $label: reviews answered per second; errors; answers with a patch | $achieved/s; $errors of $sent; $patched | $RATE/s; 0 |")
    rows+=("| $label: injector CPU; its own review time, mean (p99 bucket) | $cpu % of a core; $server_mean ms ($server_p99 ms) | – |")
    others_pct=$(awk -v s="$others" -v d="$DURATION" -v n="$(nproc)" 'BEGIN {printf "%.1f", s / d / n * 100}')
    rows+=("| $label: CPU used by other processes meanwhile (biggest) | $others_pct % of all CPUs ($others_top) | ≈ 0 |")
done
peak=$(status_kib VmHWM)
sleep 2
idle_after=$(status_kib VmRSS)

pin_note="unpinned"
if [[ $PIN == 1 ]]; then pin_note="injector on CPU $SERVER_CPUS, load generator on CPU $CLIENT_CPUS"; fi
echo
echo "inflight-injector $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- injector runtime 2>/dev/null || echo '+changes'), $(nproc) CPUs ($pin_note), TLS on loopback, $RATE reviews/s for $DURATION s after $WARMUP s of warm-up:"
echo
echo "| measure | value | target |"
echo "| --- | ---: | ---: |"
for row in "${rows[@]}"; do echo "$row"; done
echo "| RSS idle after start | $(mib "$idle_before") | ≤ 20 MiB |"
echo "| RSS peak (VmHWM) over all the load | $(mib "$peak") | ≤ 20 MiB |"
echo "| RSS idle after the load | $(mib "$idle_after") | ≤ 20 MiB |"
