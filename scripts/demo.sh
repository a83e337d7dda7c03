#!/usr/bin/env bash
# The local demo on the embedded cluster, the README's first command. The test bed (a real
# one-node Kubernetes with real KEDA, built from Go modules, see docs/testbed.md) comes up; the
# inflight chart is installed into it with Helm, as on any cluster; a demo app runs in a namespace
# labelled inflight.dev/inject=enabled (the injector adds the proxy to its pods) under an
# HTTPAutoscaler with minReplicas 0. Load rises and stops while `kubectl inflight top` shows the
# app going from 0 to several pods and back to 0, every request answered.
#
#   ./scripts/demo.sh          ends by itself (or on Ctrl-C) and removes what it made
#   ./scripts/demo.sh --keep   leaves the cluster, the chart and the app running
#
# Needs root (the bed's network namespaces, cgroups and containerd).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inflight/target}"

KEEP=0
for arg in "$@"; do
    case "$arg" in
    --keep) KEEP=1 ;;
    -h | --help)
        sed -n '2,12p' "$0"
        exit 0
        ;;
    *)
        echo "demo.sh: unknown argument $arg (--keep, --help)" >&2
        exit 2
        ;;
    esac
done

NS=demo
LATENCY="${LATENCY:-200ms}"
TARGET="${TARGET:-5}"
# requests/s:duration. By Little's law in flight = rate x latency: 2, 10, 20, then 6 requests in
# flight, so 1, 2, 4 and 2 pods at 5 per pod; then nothing, and the app goes back to zero.
SCHEDULE="${SCHEDULE:-10:15s,50:20s,100:25s,30:15s}"
SCALE_TO_ZERO_AFTER="${SCALE_TO_ZERO_AFTER:-30s}"

# Each step shows the time since the start, so a slow run says where its time went.
step() { printf '\n== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
# Nothing ends this script without saying where and why.
trap 'echo "demo.sh: failed at line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
# shellcheck source=lib/testbed.sh
source scripts/lib/testbed.sh
prepare_testbed
cargo build --profile "$profile" --locked -p kubectl-inflight
inflight="$CARGO_TARGET_DIR/$profile/kubectl-inflight"
load_bin="$CARGO_TARGET_DIR/$profile/inflight-demo-app"

cache="${INFLIGHT_CACHE:-$HOME/.cache/inflight}/testbed"
kubectl() { "$cache/kubernetes-$(sed -n 's/^KUBERNETES_VERSION=//p' testbed/versions.env)/bin/kubectl" "$@"; }
helm() { "$cache/helm-$(sed -n 's/^HELM_VERSION=//p' testbed/versions.env)/bin/helm" "$@"; }

started_bed=0
load=""
cleanup() {
    trap - EXIT INT TERM
    [[ -n $load ]] && kill "$load" 2>/dev/null || true
    if ((KEEP)); then
        cat <<EOF

The demo is still running. Try:
  export KUBECONFIG=$KUBECONFIG
  $inflight top -n $NS
  kubectl get hta -A
  kubectl get --raw /apis/metrics.smi-spec.io/v1alpha1/namespaces/$NS/deployments/app
Remove it all with: $testbed down
EOF
        return
    fi
    step "cleaning up"
    kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s || true
    helm uninstall inflight -n inflight --wait --timeout 5m || true
    if ((started_bed)); then
        "$testbed" down || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "the cluster"
if ! "$testbed" status | grep -q 'healthy: true'; then
    "$testbed" up
    started_bed=1
fi
export KUBECONFIG
KUBECONFIG="$("$testbed" kubeconfig)"
kubectl get nodes

step "inflight, installed with Helm (charts/inflight), beside KEDA"
# The bed's images are built here (inflight.local/<name>:dev) and never pulled. --take-ownership:
# a bed used by the tests may hold objects of the same names.
helm upgrade --install inflight charts/inflight -n inflight --create-namespace \
    --set image.tag=dev --set image.pullPolicy=Never --take-ownership --wait --timeout 5m
kubectl -n inflight get deployments

step "the demo app in namespace $NS (labelled inflight.dev/inject=enabled), under an HTTPAutoscaler"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$NS" inflight.dev/inject=enabled --overwrite
kubectl -n "$NS" apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 1
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
      - name: app
        image: inflight.local/inflight-demo-app:dev
        imagePullPolicy: Never
        args: [serve, --listen, "0.0.0.0:8080", --latency, "$LATENCY"]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
          readOnlyRootFilesystem: true
          runAsNonRoot: true
          runAsUser: 65532
          seccompProfile: {type: RuntimeDefault}
---
apiVersion: v1
kind: Service
metadata: {name: app}
spec:
  selector: {app: app}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: inflight.dev/v1alpha1
kind: HTTPAutoscaler
metadata: {name: app}
spec:
  scaleTargetRef: {kind: Deployment, name: app}
  service: {name: app, port: 80, targetPort: 8080}
  minReplicas: 0
  maxReplicas: 10
  metric: {type: concurrency, target: $TARGET}
  scaleToZeroAfter: $SCALE_TO_ZERO_AFTER
YAML
kubectl -n "$NS" rollout status deployment/app --timeout=180s
echo "containers of the app's pod (the injector added inflight-proxy):"
kubectl -n "$NS" get pods -l app=app -o 'jsonpath={range .items[*]}{.metadata.name}: {.spec.initContainers[*].name} {.spec.containers[*].name}{"\n"}{end}'

# Waits, showing the live view every few seconds, until the HTTPAutoscaler is at zero in proxy
# mode (the activator takes its requests), or fails after $1 seconds.
wait_for_zero() {
    local deadline=$((SECONDS + $1))
    until [[ "$(kubectl -n "$NS" get hta app -o 'jsonpath={.status.mode}/{.status.replicas}' 2>/dev/null)" == Proxy/0 ]]; do
        if ((SECONDS > deadline)); then
            echo "demo.sh: app not at zero within $1s" >&2
            kubectl -n "$NS" describe hta app >&2 || true
            return 1
        fi
        "$inflight" top -n "$NS" --once || true
        sleep 5
    done
    "$inflight" top -n "$NS" --once
}
step "idle: the app goes to zero after scaleToZeroAfter ($SCALE_TO_ZERO_AFTER)"
wait_for_zero 300

svc="$(kubectl -n "$NS" get service app -o 'jsonpath={.spec.clusterIP}')"
step "load through the Service (http://$svc/, Host app.$NS), $LATENCY per request, $TARGET in flight per pod"
echo "schedule (requests/s:duration): $SCHEDULE"
log="$(mktemp)"
"$load_bin" load --target "http://$svc/" --host "app.$NS" --schedule "$SCHEDULE" >"$log" 2>&1 &
load=$!
# The live view: the autoscaler's mode, pods, requests in flight against the target, rate, p99.
"$inflight" top -n "$NS" --interval 2s &
view=$!
status=0
wait "$load" || status=$?
load=""
kill "$view" 2>/dev/null || true
wait "$view" 2>/dev/null || true
echo
tail -n 1 "$log"
rm -f "$log"
if ((status != 0)); then
    echo "demo.sh: the load generator failed (exit $status): not every request was answered" >&2
    exit 1
fi

step "load stopped: back to zero after scaleToZeroAfter"
wait_for_zero 300
echo
echo "demo done: the app went from 0 to several pods and back to 0, every request answered."
