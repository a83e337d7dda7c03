#!/usr/bin/env bash
# bench/cold-start.sh — a cold start on the test bed, step by step (issue 12).
#
# The first request for a workload at zero, from being sent to its response, split into the steps
# it waits for — held → activation pushed → KEDA scales → pod created → scheduled → containers
# running → sidecar ready → forwarded and answered — so that inflight's own share stands beside
# what Kubernetes and KEDA take. N activations (default 20) of the activator's test bed scene
# (activator/tests/bed/mod.rs: the aggregator and two activators in the cluster, the injector and
# the operator in the benchmark's process, real KEDA, the injected demo Deployment `web` answering
# at once) by activator/examples/cold_start.rs; see there for what each step's timestamp is.
# Nothing here asserts a number: the figures are printed and written to $OUT (bench/COLD-START.md),
# the raw ones to $JSON.
#
# Needs root and the test bed's parts, built like scripts/test.sh does (the cluster's components
# once per version; our binaries in release and their images, rebuilt only when they changed). A
# bed that is up and healthy is used and left up; one that is down is brought up with
# `inflight-testbed up` and brought down at the end (KEEP_BED=1 leaves it up).
#
# Usage: bench/cold-start.sh            (N=20; about 40 s an activation once built)
#        N=5 bench/cold-start.sh
# Knobs: N, OUT, JSON, SCALE_TO_ZERO_AFTER (10s), POLLING_INTERVAL (2s), PROFILE (release|debug:
# the build of the benchmark's process, which runs the injector; release by default), KEEP_BED.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/inflight/target}
N=${N:-20}
OUT=${OUT:-$ROOT/bench/COLD-START.md}
JSON=${JSON:-$CARGO_TARGET_DIR/cold-start.json}
SCALE_TO_ZERO_AFTER=${SCALE_TO_ZERO_AFTER:-10s}
POLLING_INTERVAL=${POLLING_INTERVAL:-2s}
PROFILE=${PROFILE:-release}

step() { printf '\n== %s\n' "$*" >&2; }
trap 'echo "cold-start.sh: failed at line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR

# The CLI, the cluster's components, our binaries and their images (scripts/lib/testbed.sh).
# shellcheck source=../scripts/lib/testbed.sh
source scripts/lib/testbed.sh
# What is measured is what ships: the images built with the release profile.
export INFLIGHT_IMAGE_PROFILE=${INFLIGHT_IMAGE_PROFILE:-release}
prepare_testbed

step "the benchmark ($PROFILE build of activator/examples/cold_start.rs)"
case $PROFILE in
release) cargo build --locked --release -p inflight-activator --example cold_start ;;
debug) cargo build --locked -p inflight-activator --example cold_start ;;
*) echo "cold-start.sh: PROFILE is release or debug" >&2; exit 2 ;;
esac
BIN=$CARGO_TARGET_DIR/$PROFILE/examples/cold_start

step "the test bed"
if "$testbed" status 2>/dev/null | grep -q 'healthy: true'; then
    echo "up and healthy: used as it is, left up" >&2
else
    echo "not up: inflight-testbed up" >&2
    [[ ${KEEP_BED:-} == 1 ]] || trap '"$testbed" down >&2 || true' EXIT
    "$testbed" up >&2
fi

step "$N activations"
"$BIN" --n "$N" --out "$JSON" --scale-to-zero-after "$SCALE_TO_ZERO_AFTER" \
    --polling-interval "$POLLING_INTERVAL" >&2

python3 - "$OUT" "$JSON" "$(git rev-parse --short HEAD)" "$PROFILE" testbed/versions.env <<'EOF'
import datetime, json, os, sys
out, raw, rev, profile, versions = sys.argv[1:6]
r = json.load(open(raw))
v = dict(l.strip().split("=", 1) for l in open(versions) if "=" in l and not l.startswith("#"))
def f(x):
    return "–" if x is None else f"{x:,.1f}"
def cells(s):
    return f"{f(s['p50_ms'])} | {f(s['p99_ms'])} | {f(s['max_ms'])}"
names = {
    "sent": "request sent (held by an activator)",
    "pushed": "activation pushed (aggregator's StreamIsActive `true`)",
    "scaled": "KEDA scaled (Deployment `spec.replicas` ≥ 1)",
    "created": "pod created (its first watch event)",
    "scheduled": "pod scheduled (`spec.nodeName`)",
    "proxy_running": "sidecar container running (inflight-proxy, native sidecar)",
    "app_running": "app container running",
    "ready": "sidecar `/readyz` 200",
    "answered": "response at the client (200, `X-Inflight-Cold-Start`)",
}
short = {"sent": "held", "pushed": "activation pushed", "scaled": "KEDA scaled",
         "created": "pod created", "scheduled": "pod scheduled", "proxy_running": "sidecar running",
         "app_running": "app running", "ready": "sidecar ready", "answered": "forwarded, answered",
         "proxy_serving": "proxy serving (log)", "app_serving": "app serving (log)"}
whose = {"pushed": "ours", "answered": "ours"}
lines = [
    "# Cold start on the test bed, step by step",
    "",
    f"Written by `bench/cold-start.sh` on {datetime.date.today()} (commit {rev}), "
    f"{os.cpu_count()} CPUs, the one-node test bed (Kubernetes {v.get('KUBERNETES_VERSION')}, "
    f"KEDA {v.get('KEDA_VERSION')}); {r['ok']} of {r['n']} activations answered 200 with "
    f"`X-Inflight-Cold-Start`, in {r['seconds'] / 60:.1f} min. Nothing here is a target that is checked.",
    "",
    "## Where the time goes",
    "",
    "Each step from the one before, in ms over the activations; percentiles by nearest rank, so "
    "with fewer than 100 activations the p99 is the maximum.",
    "",
    "| step | whose | p50 | p99 | max |",
    "|---|---|---:|---:|---:|",
]
for s in r["steps"]:
    lines.append(f"| {short[s['from']]} → {short[s['to']]} | {whose.get(s['to'], 'Kubernetes+KEDA')} | {cells(s['ms'])} |")
lines += [
    "",
    "| total | p50 | p99 | max |",
    "|---|---:|---:|---:|",
    f"| **ours**: (pushed − sent) + (answered − sidecar ready) | {cells(r['ours'])} |",
    f"| **Kubernetes+KEDA**: sidecar ready − pushed | {cells(r['kubernetes_and_keda'])} |",
    f"| request sent → response at the client | {cells(r['total'])} |",
    f"| the activator's own figure, `X-Inflight-Cold-Start` | {cells(r['cold_start_header'])} |",
    f"| the injector's review of the new pod (inside \"KEDA scaled → pod created\") | {cells(r['injector_review'])} |",
    "",
    "Target for ours: ≤ 100 ms p99 over 20 activations.",
    "",
    "The kubelet reports container states in batches (its status updates follow its relisting, about "
    "once a second: the sidecar's `running` comes in the event that gives the pod its IP, the app's in "
    "the one that makes the pod Ready, often after the sidecar already answered `/readyz` 200). The "
    "pod's start as its containers' own log lines tell it (containerd's timestamps); the app is started "
    "only once the sidecar's startup probe (`/healthz`, which the injector sets to every 1 s) has passed:",
    "",
    "| step | p50 | p99 | max |",
    "|---|---:|---:|---:|",
]
for s in r["log_steps"]:
    lines.append(f"| {short[s['from']]} → {short[s['to']]} | {cells(s['ms'])} |")
lines += [
    "",
    "Each step's time after the request was sent (ms), and what it is:",
    "",
    "| step | p50 | p99 | max |",
    "|---|---:|---:|---:|",
]
extra = {"pod_ip": "pod IP known (sandbox and network up)",
         "proxy_serving": "the proxy's `inflight-proxy serving` log line (its ports listen)",
         "app_serving": "the app's `inflight-demo-app serving` log line (its port listens)",
         "kubelet_ready": "pod `Ready` condition (kubelet's probe; not on the path)"}
order = ["pushed", "scaled", "created", "scheduled", "proxy_serving", "pod_ip", "proxy_running",
         "app_serving", "ready", "answered", "app_running", "kubelet_ready"]
for k in order + sorted(set(r["after_sent"]) - set(order)):
    lines.append(f"| {names.get(k) or extra[k]} | {cells(r['after_sent'][k])} |")
cols = ["pushed", "scaled", "created", "scheduled", "proxy_serving", "proxy_running",
        "app_serving", "app_running", "ready", "answered"]
lines += [
    "",
    "## Method",
    "",
    f"`bench/cold-start.sh` runs `activator/examples/cold_start.rs` ({profile} build) on the scene of "
    "the activator's test bed tests (`activator/tests/bed/mod.rs`): the aggregator and two "
    "`inflight-activator` replicas (25 ms probing) in the cluster, the injector and the operator in the "
    "benchmark's process, real KEDA, and the demo Deployment `web` (the app answering at once, "
    f"`--latency 0s`; inflight-proxy injected as a native sidecar) behind an HTTPAutoscaler "
    f"`{json.dumps(r['hta_spec'])}` with minReplicas 0. For each activation it waits until `web` has no "
    "replica and no pod left and its Service is on the activators, "
    f"{r['settle_s']:g} s more, then sends one HTTP/1.1 request from this host to the Service's "
    "ClusterIP (kube-proxy takes it to an activator, which holds it).",
    "",
    "Every timestamp is the arrival of something at the benchmark's process, on its monotonic clock; "
    "every component runs on this one machine, so all share that clock. *pushed*: `true` on a "
    "StreamIsActive stream of the benchmark's own to the aggregator pod's gRPC port, opened before the "
    "request with the ScaledObjectRef KEDA sends (the ScaledObject's trigger metadata), so the push "
    "KEDA gets. *scaled*, *created*, *scheduled*, *containers running*: kube-rs watch events of the "
    "Deployment and of the pods (`spec.replicas`, the pod's first event, `spec.nodeName`, "
    "`initContainerStatuses`/`containerStatuses` `state.running`) as they arrive; Kubernetes' own "
    "timestamps (conditions' `lastTransitionTime`) have one second's resolution and are not used, and "
    "a watch event comes some milliseconds after the change it reports (the kubelet's status updates "
    "more), which is why a step may even look negative. *Log lines*: the timestamp containerd's CRI "
    "logger put on the container's line (`kubectl logs --timestamps`, nanoseconds, this host's wall "
    "clock, compared with the wall-clock time the request was sent). *sidecar ready*: the new pod's "
    f"`GET :15090/readyz` answered 200, polled from this host every {r['readyz_poll_ms']:g} ms from "
    "its IP's first event. *answered*: the whole response read.",
    "",
    "Ours is the time until KEDA is told plus the time from the pod being ready to the response: the "
    "activator's wait for its next probe (every 25 ms), its forward, the sidecar and the app (which "
    "answers at once). The injector's admission review is also ours but sits inside Kubernetes' "
    "column (its own `review_duration` histogram, shown apart).",
    "",
    "## Every activation",
    "",
    "Each step's time after the request was sent (ms), the activator's `X-Inflight-Cold-Start` and the "
    "injector's review (ms).",
    "",
    "| # | " + " | ".join(short[k] for k in cols) + " | header | injector |",
    "|---|" + "---:|" * (len(cols) + 2),
]
for a in r["activations"]:
    ms = a["ms"]
    row = " | ".join(f(ms.get(k)) for k in cols)
    ok = "" if a["ok"] else f" (NOT OK: status {a['status']})"
    lines.append(f"| {a['activation']}{ok} | {row} | {f(a['cold_start_header_ms'])} | {f(a['injector_review_ms'])} |")
lines.append("")
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
echo "cold-start.sh: $OUT (raw: $JSON)" >&2
