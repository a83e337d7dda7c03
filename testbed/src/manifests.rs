//! Manifests the tests of several crates put on the bed, written once: the demo app, and the demo
//! app behind `inflight-proxy` added by hand as the injector would add it (for tests that are not
//! about the injector); our components as pods. Every container here passes the `restricted` Pod
//! Security Standard with a read-only root filesystem ([`restricted`]).

use serde_json::{json, Value};

use crate::images::{image_ref, UID};

/// The securityContext of every container the tests run: what the `restricted` Pod Security
/// Standard asks (no privilege escalation, every capability dropped, not root, the runtime's
/// seccomp profile) and a read-only root filesystem. The user and group are numbers ([`UID`], the
/// images' own): an image `FROM scratch` has no user database for the kubelet to check a name in.
pub fn restricted() -> Value {
    json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
           "readOnlyRootFilesystem": true, "runAsNonRoot": true, "runAsUser": UID, "runAsGroup": UID,
           "seccompProfile": {"type": "RuntimeDefault"}})
}

/// A Deployment `name` whose pods are labelled `app: <name>`, with `pod` as their spec.
pub fn deployment(name: &str, replicas: i32, pod: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
          "template": {"metadata": {"labels": {"app": name}}, "spec": pod}}})
}

/// The demo app serving on 8080, each request taking `latency`; it answers
/// `hello from the inflight demo app on <pod>`.
pub fn demo_app(latency: &str) -> Value {
    json!({
        "name": "app", "image": image_ref("inflight-demo-app"), "imagePullPolicy": "Never",
        "args": ["serve", "--listen", "0.0.0.0:8080", "--latency", latency],
        "securityContext": restricted(),
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}})
}

/// The pod's projected token for the aggregator, as the injector adds it.
pub fn token_volume() -> Value {
    json!({"name": "inflight-aggregator-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": "inflight.dev/aggregator", "expirationSeconds": 3600, "path": "token"}}]}})
}

/// Where a reporter (the proxy, the activator) mounts [`token_volume`].
pub fn token_mount() -> Value {
    json!({"name": "inflight-aggregator-token", "mountPath": "/var/run/secrets/inflight.dev/aggregator", "readOnly": true})
}

/// `inflight-proxy` as a native sidecar in front of the app on 8080, reporting `workload`
/// (`deployment/web`) to `aggregator` (a URL), with the token of [`token_volume`].
pub fn proxy_sidecar(workload: &str, aggregator: &str) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    json!({
        "name": "inflight-proxy", "image": image_ref("inflight-proxy"), "imagePullPolicy": "Never",
        "restartPolicy": "Always",
        "args": ["--upstream", "127.0.0.1:8080", "--workload", workload, "--aggregator", aggregator],
        "env": [{"name": "POD_NAME", "valueFrom": field("metadata.name")},
                {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
                {"name": "POD_IP", "valueFrom": field("status.podIP")}],
        "ports": [{"containerPort": 15080, "name": "inflight-http"}],
        "volumeMounts": [token_mount()],
        "securityContext": restricted(),
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15090}, "periodSeconds": 1}})
}

/// Deployment `name`: the demo app behind `inflight-proxy`, reporting to the aggregator whose
/// headless Service is `inflight-aggregator-ingest` in `ns`; its pods labelled with their
/// workload, as the injector labels them (the aggregator holds their reports to it).
pub fn proxied_demo(ns: &str, name: &str, replicas: i32, latency: &str) -> Value {
    let aggregator = format!("http://inflight-aggregator-ingest.{ns}.svc.cluster.local:9090");
    let mut d = deployment(
        name,
        replicas,
        json!({"initContainers": [proxy_sidecar(&format!("deployment/{name}"), &aggregator)],
               "containers": [demo_app(latency)],
               "volumes": [token_volume()]}),
    );
    d["spec"]["template"]["metadata"]["labels"]["inflight.dev/workload"] =
        json!(format!("deployment.{name}"));
    d
}

/// One aggregator under the chart's ServiceAccount (`chart::apply_rbac(tb,
/// "aggregator-rbac.yaml")` first), with `args`; the Service KEDA calls and the headless one the
/// proxies and activators resolve to each replica (warming-up replicas too). Never injected. Its
/// scaler port (9091) is mutual TLS with the operator's certificates: its serving Secret
/// `inflight-aggregator-tls`, and the client CAs of `inflight-ca`, so the pod starts once an
/// operator's TLS bootstrap has written them in the namespace.
pub fn aggregator(args: &[&str]) -> Value {
    let mut all = vec![
        "--tls-cert",
        "/var/run/secrets/inflight.dev/tls/tls.crt",
        "--tls-key",
        "/var/run/secrets/inflight.dev/tls/tls.key",
        "--scaler-client-ca",
        "/var/run/secrets/inflight.dev/client-ca/ca.crt",
    ];
    all.extend_from_slice(args);
    let mut list = aggregator_plaintext(&all);
    let pod = &mut list["items"][0]["spec"]["template"]["spec"];
    pod["volumes"] = json!([
        {"name": "tls", "secret": {"secretName": "inflight-aggregator-tls"}},
        {"name": "client-ca", "secret": {"secretName": "inflight-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]);
    pod["containers"][0]["volumeMounts"] = json!([
        {"name": "tls", "mountPath": "/var/run/secrets/inflight.dev/tls", "readOnly": true},
        {"name": "client-ca", "mountPath": "/var/run/secrets/inflight.dev/client-ca", "readOnly": true}]);
    list
}

/// [`aggregator`] with the scaler port in plaintext (`--scaler-auth none`) and no Secrets, for
/// tests without an operator whose subject is not who calls the scaler.
pub fn aggregator_plaintext(args: &[&str]) -> Value {
    let mut all = if args.contains(&"--scaler-client-ca") {
        vec![]
    } else {
        vec!["--scaler-auth", "none"]
    };
    all.extend_from_slice(args);
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "inflight-aggregator"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "inflight-aggregator"}},
           "template": {"metadata": {"labels": {"app": "inflight-aggregator"},
                                     "annotations": {"inflight.dev/inject": "disabled"}},
             "spec": {"serviceAccountName": "inflight-aggregator", "containers": [{
               "name": "aggregator", "image": image_ref("inflight-aggregator"), "imagePullPolicy": "Never",
               "args": all,
               "ports": [{"containerPort": 9090, "name": "grpc"}, {"containerPort": 9091, "name": "scaler"}],
               "securityContext": restricted(),
               "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15093}, "periodSeconds": 1}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inflight-aggregator"},
         "spec": {"selector": {"app": "inflight-aggregator"}, "ports": [{"name": "scaler", "port": 9091}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inflight-aggregator-ingest"},
         "spec": {"clusterIP": "None", "publishNotReadyAddresses": true,
                  "selector": {"app": "inflight-aggregator"}, "ports": [{"name": "grpc", "port": 9090}]}}
    ]})
}

/// A pod template's annotation that keeps the injector away (the components are not workloads
/// inflight scales).
pub fn not_injected(mut deployment: Value) -> Value {
    deployment["spec"]["template"]["metadata"]["annotations"] =
        json!({"inflight.dev/inject": "disabled"});
    deployment
}

/// The activators' Deployment, Service and ServiceAccount name.
pub const ACTIVATOR: &str = "inflight-activator";

/// Two replicas of the activator under the chart's ServiceAccount (`chart::apply_rbac(tb,
/// "activator-rbac.yaml")` first), watching namespace `ns`, reporting to `aggregator` (a URL) with
/// the token of [`token_volume`]; and the Service the operator takes their addresses from.
pub fn activators(ns: &str, aggregator: &str) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let pod = json!({
        "serviceAccountName": ACTIVATOR,
        "terminationGracePeriodSeconds": 30,
        // The activator proves who it is to the aggregator with this token, as the chart has it.
        "volumes": [token_volume()],
        "containers": [{
            "name": "activator", "image": image_ref(ACTIVATOR), "imagePullPolicy": "Never",
            "args": ["--aggregator", aggregator],
            "env": [{"name": "WATCH_NAMESPACE", "value": ns},
                    {"name": "RUST_LOG", "value": "info,inflight_activator=debug"},
                    {"name": "NO_COLOR", "value": "1"},
                    {"name": "POD_NAME", "valueFrom": field("metadata.name")},
                    {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
                    {"name": "POD_IP", "valueFrom": field("status.podIP")}],
            "volumeMounts": [token_mount()],
            "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 15091, "name": "admin"}],
            "securityContext": restricted(),
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15091}, "periodSeconds": 1}}]});
    json!({"apiVersion": "v1", "kind": "List", "items": [
        not_injected(deployment(ACTIVATOR, 2, pod)),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": ACTIVATOR},
         "spec": {"selector": {"app": ACTIVATOR}, "ports": [{"name": "http", "port": 8080}]}}
    ]})
}

/// The injector as a pod, serving the webhook on 8443 with `cert` and `key` (PEM, from a Secret
/// it makes), adding proxies that report to `aggregator` (a URL); and the Service `inflight-injector`
/// (port 443) that a webhook configuration names. Its only call to the API server is for the
/// version, which any ServiceAccount may read.
pub fn injector(cert: &str, key: &str, aggregator: &str) -> Value {
    let pod = json!({
        "volumes": [{"name": "tls", "secret": {"secretName": "inflight-injector-tls"}}],
        "containers": [{
            "name": "injector", "image": image_ref("inflight-injector"), "imagePullPolicy": "Never",
            "args": ["--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key",
                     "--proxy-image", image_ref("inflight-proxy"), "--proxy-image-pull-policy", "Never",
                     "--aggregator", aggregator],
            "ports": [{"containerPort": 8443, "name": "webhook"}, {"containerPort": 15092, "name": "admin"}],
            "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": true}],
            "securityContext": restricted(),
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15092}, "periodSeconds": 1}}]});
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "inflight-injector-tls"}, "stringData": {"tls.crt": cert, "tls.key": key}},
        not_injected(deployment("inflight-injector", 1, pod)),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inflight-injector"},
         "spec": {"selector": {"app": "inflight-injector"},
                  "ports": [{"name": "webhook", "port": 443, "targetPort": 8443}]}}
    ]})
}

/// The operator as a pod under the chart's ServiceAccount (`chart::apply_rbac(tb,
/// "operator-rbac.yaml")` first), reconciling namespace `ns` only, with its Lease there and the
/// activators of [`activators`]; its TLS bootstrap as the tests run it
/// ([`crate::chart::operator_args`]: the aggregator's and KEDA's certificates under the test's own
/// names, the cluster's webhook and APIService, which other tests use, left alone).
pub fn operator(ns: &str) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let mut args = vec![
        "--watch-namespace".to_owned(),
        ns.to_owned(),
        "--activator-service".to_owned(),
        format!("{ns}/{ACTIVATOR}"),
    ];
    args.extend(crate::chart::operator_args(ns));
    let pod = json!({
        "serviceAccountName": "inflight-operator",
        "containers": [{
            "name": "operator", "image": image_ref("inflight-operator"), "imagePullPolicy": "Never",
            "args": args,
            "env": [{"name": "POD_NAME", "valueFrom": field("metadata.name")},
                    {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")}],
            "ports": [{"containerPort": 15094, "name": "admin"}],
            "securityContext": restricted(),
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 15094}, "periodSeconds": 1}}]});
    not_injected(deployment("inflight-operator", 1, pod))
}
