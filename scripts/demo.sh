#!/usr/bin/env bash
# The local demo on the embedded cluster. The test bed (real Kubernetes + KEDA built from Go modules,
# see testbed/) comes up; the aggregator runs in it; the demo app runs as a Deployment whose pods
# carry inflight-proxy beside the app (added by hand until the injector exists); a KEDA ScaledObject
# with an external-push trigger asks the aggregator. A load that rises and falls goes through the
# Service, and every second the demo prints the requests in flight that KEDA sees and the replicas
# KEDA and the HPA give the app: ceil(concurrency / target).
# Needs root. The cluster stays up afterwards: `inflight-testbed down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inflight/target}"

NS=inflight-demo
LATENCY="${LATENCY:-200ms}"
TARGET="${TARGET:-5}"
SCHEDULE="${SCHEDULE:-20:15s,100:45s,10:40s}"

step() { printf '\n== %s\n' "$*"; }
# Nothing ends this script without saying where and why.
trap 'echo "demo.sh: failed at line $LINENO: $BASH_COMMAND (exit $?)" >&2' ERR
# shellcheck source=lib/testbed.sh
source scripts/lib/testbed.sh
prepare_testbed

step "the cluster"
if ! "$testbed" status | grep -q 'healthy: true'; then
    "$testbed" up
fi
export KUBECONFIG
KUBECONFIG="$("$testbed" kubeconfig)"
kubectl() { "${INFLIGHT_CACHE:-$HOME/.cache/inflight}/testbed/kubernetes-$(sed -n 's/^KUBERNETES_VERSION=//p' testbed/versions.env)/bin/kubectl" "$@"; }
kubectl get nodes

step "the aggregator, the demo app with inflight-proxy in each pod, and a ScaledObject"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
# The aggregator's rights, as the chart gives them: it reviews each report's token.
sed "s/{{ .Release.Namespace }}/$NS/g" charts/inflight/templates/aggregator-rbac.yaml | kubectl apply -f -
kubectl apply -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: inflight-aggregator, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: inflight-aggregator}}
  template:
    metadata: {labels: {app: inflight-aggregator}}
    spec:
      serviceAccountName: inflight-aggregator
      containers:
      - name: aggregator
        image: inflight.local/inflight-aggregator:dev
        imagePullPolicy: Never
        # No operator in this demo to issue KEDA's client certificate: the scaler port is
        # plaintext here (the operator's and the activator's bed tests run it as mutual TLS).
        args: [--scaler-auth, none]
        ports: [{containerPort: 9090, name: grpc}, {containerPort: 9091, name: scaler}, {containerPort: 15093, name: admin}]
        readinessProbe: {httpGet: {path: /readyz, port: 15093}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: inflight-aggregator, namespace: $NS}
spec:
  selector: {app: inflight-aggregator}
  ports: [{name: scaler, port: 9091}]
---
# Sidecars resolve every aggregator replica behind this name and report to each, a warming-up
# (not yet ready) replica too: that is how it hears every pod before it answers KEDA.
apiVersion: v1
kind: Service
metadata: {name: inflight-aggregator-ingest, namespace: $NS}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: inflight-aggregator}
  ports: [{name: grpc, port: 9090}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo, namespace: $NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: demo}}
  template:
    # The workload label and the token volume are what the injector adds: the aggregator takes
    # the pod's reports only for the workload its label names, from the pod its token is bound to.
    metadata: {labels: {app: demo, inflight.dev/workload: deployment.demo}}
    spec:
      volumes:
      - name: inflight-aggregator-token
        projected:
          sources:
          - serviceAccountToken: {audience: inflight.dev/aggregator, expirationSeconds: 3600, path: token}
      initContainers:
      # A native sidecar: starts before the app, stops after it.
      - name: inflight-proxy
        image: inflight.local/inflight-proxy:dev
        imagePullPolicy: Never
        restartPolicy: Always
        args: [--upstream, "127.0.0.1:8080", --workload, deployment/demo,
               --aggregator, "http://inflight-aggregator-ingest.$NS.svc.cluster.local:9090"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        volumeMounts:
        - {name: inflight-aggregator-token, mountPath: /var/run/secrets/inflight.dev/aggregator, readOnly: true}
        ports:
        - {containerPort: 15080, name: inflight-http}
        - {containerPort: 15090, name: inflight-admin}
        readinessProbe: {httpGet: {path: /readyz, port: 15090}, periodSeconds: 1}
      containers:
      - name: app
        image: inflight.local/inflight-demo-app:dev
        imagePullPolicy: Never
        args: [serve, --listen, "0.0.0.0:8080", --latency, "$LATENCY"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: demo, namespace: $NS}
spec:
  selector: {app: demo}
  ports: [{name: http, port: 80, targetPort: 15080}]
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: demo, namespace: $NS}
spec:
  scaleTargetRef: {name: demo}
  minReplicaCount: 1
  maxReplicaCount: 10
  pollingInterval: 2
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown: {stabilizationWindowSeconds: 10, policies: [{type: Percent, value: 100, periodSeconds: 5}]}
  triggers:
  - type: external-push
    metadata:
      scalerAddress: inflight-aggregator.$NS.svc.cluster.local:9091
      workload: deployment/demo
      target: "$TARGET"
      window: 20s
      scaleToZeroAfter: 60s
YAML
kubectl -n "$NS" rollout status deployment/inflight-aggregator --timeout=120s
kubectl -n "$NS" rollout status deployment/demo --timeout=120s

svc="$(kubectl -n "$NS" get service demo -o 'jsonpath={.spec.clusterIP}')"
metric="/apis/external.metrics.k8s.io/v1beta1/namespaces/$NS/s0-inflight-$NS-deployment-demo?labelSelector=scaledobject.keda.sh%2Fname%3Ddemo"
# KEDA serves the metric only once it has read the ScaledObject and reached the scaler: wait for
# that (a condition, with a deadline) rather than start the table on an error.
step "waiting for KEDA to serve the external metric"
deadline=$((SECONDS + 180))
until error="$(kubectl get --raw "$metric" 2>&1 >/dev/null)"; do
    if ((SECONDS > deadline)); then
        echo "demo.sh: KEDA did not serve $metric within 180s: $error" >&2
        kubectl -n "$NS" get scaledobject demo -o wide >&2 || true
        exit 1
    fi
    sleep 1
done
step "load through the Service (http://$svc/, $LATENCY per request, target $TARGET in flight per replica)"
echo "schedule (requests/s:duration): $SCHEDULE — by Little's law, in flight = rate x latency"
log="$(mktemp)"
"$CARGO_TARGET_DIR/release/inflight-demo-app" load --target "http://$svc/" --schedule "$SCHEDULE" >"$log" 2>&1 &
load=$!
trap 'kill $load 2>/dev/null || true; rm -f "$log"' EXIT
printf '%6s %14s %18s %10s\n' "t(s)" "sent req/s" "in flight (KEDA)" "replicas"
start=$SECONDS
while kill -0 "$load" 2>/dev/null; do
    # A read that fails now and then (the API server busy) shows as "-", it does not end the demo.
    value="$({ kubectl get --raw "$metric" 2>/dev/null || true; } | sed -n 's/.*"value":"\([^"]*\)".*/\1/p')"
    replicas="$(kubectl -n "$NS" get deployment demo -o 'jsonpath={.status.readyReplicas}/{.spec.replicas}' 2>/dev/null || true)"
    rate="$({ tail -n 1 "$log" || true; } | awk '$1 ~ /^[0-9]+$/ {print $2}')"
    printf '%6d %14s %18s %10s\n' $((SECONDS - start)) "${rate:--}" "${value:--}" "$replicas"
    sleep 2
done
echo
tail -n 1 "$log"
echo "the cluster stays up: KUBECONFIG=$KUBECONFIG; remove it with: $testbed down"
