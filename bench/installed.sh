#!/usr/bin/env bash
# bench/installed.sh — inflight installed with Helm, end to end (issue 14).
#
# The chart installed as the end-to-end test installs it (release `inflight` in namespace
# `inflight`, the bed's images), the demo app in an injected namespace under an HTTPAutoscaler
# with minReplicas 0, then two figures of the installed system, by e2e/examples/installed.rs:
#   1. a cold start split step by step, N times (held → activation pushed → KEDA scaled → pod
#      created, scheduled → containers running → sidecar ready → answered), as bench/cold-start.sh
#      does for the activator's scene;
#   2. at a steady, moderate rate (h2load --h1 --rps, RATE req/s over CONNS connections, DURATION s
#      a run, ROUNDS rounds), the latency of (a) the app pod direct, (b) its sidecar, (c) the Service
#      (client → Service → sidecar → app), the app held at one replica, and what (b) and (c) add.
# Ends with `helm uninstall`. Nothing here asserts a number: the figures are written to $OUT
# (bench/INSTALLED.md), the raw ones to $JSON.
#
# Needs root and the test bed's parts, built like scripts/test.sh does (scripts/lib/testbed.sh;
# PREPARE=0 skips that and uses what is built). A bed that is up and healthy (named by
# $INFLIGHT_TESTBED, default `default`) is used and left up; one that is down is brought up and
# brought down at the end (KEEP_BED=1 leaves it up).
#
# Usage: bench/installed.sh                      (N=10, ROUNDS=2 x 3 targets x 30 s; ~15 min)
#        N=3 ROUNDS=1 DURATION=10 bench/installed.sh
# Knobs: N, RATE (200), CONNS (10), DURATION (30), ROUNDS (2), WARMUP (3), LATENCY (0s, the app's),
#        SCALE_TO_ZERO_AFTER (10s), POLLING_INTERVAL (2s), OUT, JSON, PREPARE, KEEP_BED.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/inflight/target}
OUT=${OUT:-$ROOT/bench/INSTALLED.md}
JSON=${JSON:-$CARGO_TARGET_DIR/installed.json}

step() { printf '\n== %s\n' "$*" >&2; }
trap 'echo "installed.sh: failed at line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR

command -v h2load >/dev/null || apt-get install -y nghttp2-client >&2

if [[ ${PREPARE:-1} == 1 ]]; then
    # The CLI, the cluster's components, our binaries and their images (scripts/lib/testbed.sh).
    # shellcheck source=../scripts/lib/testbed.sh
    source scripts/lib/testbed.sh
    # What is measured is what ships: the images built with the release profile.
    export INFLIGHT_IMAGE_PROFILE=${INFLIGHT_IMAGE_PROFILE:-release}
    prepare_testbed
else
    cargo build --locked -p inflight-testbed >&2
    testbed="$CARGO_TARGET_DIR/debug/inflight-testbed"
fi

step "the benchmark (e2e/examples/installed.rs)"
cargo build --locked -p inflight-e2e --example installed >&2
BIN=$CARGO_TARGET_DIR/debug/examples/installed

step "the test bed"
if "$testbed" status 2>/dev/null | grep -q 'healthy: true'; then
    echo "up and healthy: used as it is, left up" >&2
else
    echo "not up: inflight-testbed up" >&2
    [[ ${KEEP_BED:-} == 1 ]] || trap '"$testbed" down >&2 || true' EXIT
    "$testbed" up >&2
fi

step "installed, cold starts, steady state"
knobs=""
for k in N RATE CONNS DURATION ROUNDS WARMUP LATENCY; do
    [[ -n ${!k:-} ]] && knobs+="$k=${!k} "
done
"$BIN" --out "$JSON" --md "$OUT" --command "${knobs}bench/installed.sh" \
    ${N:+--n "$N"} ${RATE:+--rate "$RATE"} ${CONNS:+--conns "$CONNS"} \
    ${DURATION:+--duration "$DURATION"} ${ROUNDS:+--rounds "$ROUNDS"} ${WARMUP:+--warmup "$WARMUP"} \
    ${LATENCY:+--latency "$LATENCY"} \
    --scale-to-zero-after "${SCALE_TO_ZERO_AFTER:-10s}" --polling-interval "${POLLING_INTERVAL:-2s}"
echo "installed.sh: $OUT (raw: $JSON)" >&2
