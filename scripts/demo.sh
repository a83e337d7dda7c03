#!/usr/bin/env bash
# The local demo on the embedded cluster: the test bed (real Kubernetes + KEDA built from Go
# modules, see testbed/) comes up, the demo app runs as a Deployment of 2 pods with inflight-proxy
# beside the app in each pod (added by hand until the injector exists), and a load that rises and
# falls goes through the Service's ClusterIP while the live figures of one pod's proxy are printed
# every second. By Little's law the requests in flight settle near rate x latency.
# Needs root. The cluster stays up afterwards: `inflight-testbed down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inflight/target}"

NS=inflight-demo
LATENCY="${LATENCY:-100ms}"
SCHEDULE="${SCHEDULE:-20:5s,200:10s,50:5s,0:3s}"

step() { printf '\n== %s\n' "$*"; }
# shellcheck source=lib/testbed.sh
source scripts/lib/testbed.sh
prepare_testbed

step "the cluster"
if ! "$testbed" status | grep -q 'healthy: true'; then
    "$testbed" up
fi
export KUBECONFIG
KUBECONFIG="$("$testbed" kubeconfig)"
kubectl() { "$HOME/.cache/inflight/testbed/kubernetes-$(sed -n 's/^KUBERNETES_VERSION=//p' testbed/versions.env)/bin/kubectl" "$@"; }
kubectl get nodes

step "the demo app with inflight-proxy in each pod"
kubectl apply -f - <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo, namespace: $NS}
spec:
  replicas: 2
  selector: {matchLabels: {app: demo}}
  template:
    metadata: {labels: {app: demo}}
    spec:
      initContainers:
      # A native sidecar: starts before the app, stops after it.
      - name: inflight-proxy
        image: inflight.local/inflight-proxy:dev
        imagePullPolicy: Never
        restartPolicy: Always
        args: [--upstream, "127.0.0.1:8080", --workload, deployment/demo]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
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
YAML
kubectl -n "$NS" rollout status deployment/demo --timeout=120s
kubectl -n "$NS" get pods -o wide

svc="$(kubectl -n "$NS" get service demo -o 'jsonpath={.spec.clusterIP}')"
pods=($(kubectl -n "$NS" get pods -l app=demo -o 'jsonpath={range .items[*]}{.status.podIP}{" "}{end}'))
step "load through the Service (http://$svc/, from the host through kube-proxy), live figures of the proxy in pod ${pods[0]}"
echo "load schedule (requests/s:duration): $SCHEDULE; latency $LATENCY per request; 2 pods share the load"
"$CARGO_TARGET_DIR/release/inflight-demo-app" load --target "http://$svc/" \
    --admin "${pods[0]}:15090" --schedule "$SCHEDULE"

step "every pod's /stats at the end"
for ip in "${pods[@]}"; do
    echo "$ip: $("$CARGO_TARGET_DIR/release/inflight-demo-app" get "http://$ip:15090/stats" | cut -d' ' -f2-)"
done
echo
echo "the cluster stays up: KUBECONFIG=$KUBECONFIG; remove it with: $testbed down"
