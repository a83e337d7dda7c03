#!/usr/bin/env bash
# bench/activator.sh — the activator's own share of a cold start, and what holding costs it.
#
#   readyz → app   N activations (default 100) of a workload at zero, each with one request
#                  held: the pod's /readyz turns 200 at a random phase of the probe period, and
#                  the time until the held request reaches the app is recorded ("ready → app");
#                  also from the first /readyz answered 200 ("first 200 → app": the activator's
#                  reaction once its probe has seen the pod ready). With --probe-interval 25ms
#                  (ours) and 200ms (Knative's activator probes every 200 ms).
#   wake           N workloads at zero, one request each: from sending it to the real aggregator
#                  (in the same process) pushing `true` on a StreamIsActive stream, as KEDA holds
#                  one (the activator reports every 60 s: only the at-once report can do it).
#   held           HELD (default 10,000) requests held by one activator process, each on a
#                  connection of its own: the process's RSS before, while holding and after;
#                  then the pod comes up (containerConcurrency 100) and every request must be
#                  answered 200.
#
# Both run activator/examples/activator_bench.rs: the real activator library on loopback, its
# route and pod given by the program instead of by Kubernetes (the test bed's tests cover the
# watches). Nothing here asserts a number; figures go to $OUT (bench/ACTIVATOR.md).
#
# Forwarding overhead while a workload is up is a target of bench/run.sh
# (TARGETS="direct inflight-proxy inflight-activator").
#
# Usage: bench/activator.sh          (N=100 HELD=10000; ~3 min once built)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/inflight/target}
N=${N:-100}
HELD=${HELD:-10000}
OUT=${OUT:-$ROOT/bench/ACTIVATOR.md}
BIN=$CARGO_TARGET_DIR/release/examples/activator_bench

(cd "$ROOT" && cargo build --release --quiet -p inflight-activator --example activator_bench)
# Each held request is a client socket here and one in the activator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -ge $((HELD + 1000)) ] || { echo "activator.sh: open-files limit $(ulimit -n) is below HELD+1000" >&2; exit 2; }

echo "activations with 25ms probing..." >&2
a25=$("$BIN" activations --n "$N" --probe-interval 25ms)
echo "activations with 200ms probing..." >&2
a200=$("$BIN" activations --n "$N" --probe-interval 200ms)
echo "wake-ups..." >&2
wake=$("$BIN" wake --n "$N")
echo "$HELD held requests..." >&2
held=$("$BIN" held --n "$HELD" --container-concurrency 100)

python3 - "$OUT" "$a25" "$a200" "$held" "$wake" "$(git -C "$ROOT" rev-parse --short HEAD)" <<'EOF'
import json, sys, datetime, os
out, a25, a200, held, wake, rev = sys.argv[1], *map(json.loads, sys.argv[2:6]), sys.argv[6]
def row(a, key):
    s = a[key]
    return f"| {a['probe_interval']} | {key.replace('_', ' ')} | {s['n']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} |"
mib = lambda kib: f"{kib / 1024:.1f} MiB"
lines = [
    "# The activator: cold-start share and holding",
    "",
    f"Written by `bench/activator.sh` on {datetime.date.today()} (commit {rev}), "
    f"{os.cpu_count()} CPUs, loopback; release build of `activator/examples/activator_bench.rs`.",
    "",
    "## Pod ready → held request at the app",
    "",
    "Each activation: one request held for a workload at zero; after one probe period plus a random",
    "part of another, the pod's `/readyz` turns 200; measured until the request reaches the app.",
    "\"ready to app\" counts from that moment (includes waiting for the next probe); \"first 200 to",
    "app\" from the first `/readyz` answered 200 (the activator's reaction). Target: p99 ≤ 30 ms",
    "ready → app with 25 ms probing.",
    "",
    "| probe interval | from | activations | p50 ms | p99 ms | max ms |",
    "|---|---|---|---|---|---|",
    row(a25, "ready_to_app"), row(a25, "first_200_to_app"),
    row(a200, "ready_to_app"), row(a200, "first_200_to_app"),
    "",
    "## First held request → KEDA told",
    "",
    "A request for a workload at zero, to the real aggregator pushing `true` on the",
    "`StreamIsActive` stream KEDA would hold (one per workload, opened before). Target: 10 ms.",
    "",
    "| workloads | p50 ms | p99 ms | max ms |",
    "|---|---|---|---|",
    (lambda s: f"| {s['n']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.2f} |")(wake["request_to_stream_is_active_true"]),
    "",
    f"## {held['held']} requests held",
    "",
    "One activator process (2 worker threads), each request on a client connection of its own;",
    f"then the pod comes up with containerConcurrency {held['container_concurrency']}. Target: RSS ≤ 64 MiB.",
    "",
    "| | |",
    "|---|---|",
    f"| RSS before any request | {mib(held['rss_idle_kib'])} |",
    f"| RSS with all {held['held']} held | {mib(held['rss_held_kib'])} (peak so far {mib(held['hwm_held_kib'])}) |",
    f"| answered 200 after the pod came up | {held['answered_200']} of {held['held']} |",
    f"| pod up → all answered | {held['seconds_from_wake_to_all_answered']:.2f} s |",
    f"| RSS after, peak over the whole run | {mib(held['rss_after_kib'])}, {mib(held['hwm_after_kib'])} |",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
