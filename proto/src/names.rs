//! Names and ports from the design page's table. Every crate takes them from
//! here, so a port or label is changed in one place.

/// API group of the `HTTPAutoscaler` CRD.
pub const API_GROUP: &str = "inflight.dev";
/// Namespace label that enables injection (`inflight.dev/inject=enabled`).
pub const INJECT_LABEL: &str = "inflight.dev/inject";
/// Pod annotation naming the app port the proxy forwards to.
pub const PORT_ANNOTATION: &str = "inflight.dev/port";
/// Annotation the injector stamps, with its version.
pub const INJECTED_ANNOTATION: &str = "inflight.dev/injected";
/// Label the injector stamps: `<kind>.<name>` of the owning workload.
pub const WORKLOAD_LABEL: &str = "inflight.dev/workload";

/// Name of the sidecar container.
pub const PROXY_CONTAINER: &str = "inflight-proxy";
/// Sidecar data port and its name.
pub const PROXY_PORT: u16 = 15080;
pub const PROXY_PORT_NAME: &str = "inflight-http";
/// Sidecar admin port: `/metrics`, `/healthz`, `/readyz`, `/stats`.
pub const PROXY_ADMIN_PORT: u16 = 15090;
pub const PROXY_ADMIN_PORT_NAME: &str = "inflight-admin";

/// Aggregator: gRPC (KEDA external scaler and Ingest), SMI API, admin.
pub const AGGREGATOR_GRPC_PORT: u16 = 9090;
pub const AGGREGATOR_SMI_PORT: u16 = 6443;
pub const AGGREGATOR_ADMIN_PORT: u16 = 15093;

/// Activator data and admin ports.
pub const ACTIVATOR_PORT: u16 = 8080;
pub const ACTIVATOR_ADMIN_PORT: u16 = 15091;

/// Injector webhook and admin ports.
pub const INJECTOR_PORT: u16 = 8443;
pub const INJECTOR_ADMIN_PORT: u16 = 15092;

/// Operator admin port.
pub const OPERATOR_ADMIN_PORT: u16 = 15094;

/// Prefix of every Prometheus metric we export.
pub const METRIC_PREFIX: &str = "inflight";

/// The external metric a ScaledObject's trigger gets for a workload: stable per workload and
/// valid as a Kubernetes metric name. The aggregator answers KEDA under it; the operator asks it
/// for the figure in an HTTPAutoscaler's status.
pub fn scaler_metric_name(namespace: &str, kind: &str, name: &str) -> String {
    format!("inflight-{namespace}-{kind}-{name}").to_ascii_lowercase()
}

/// The header the activator adds to a response whose request it held, and for how long
/// (`1834ms`): what a client sees of a cold start.
pub const COLD_START_HEADER: &str = "x-inflight-cold-start";

/// Audience of the projected ServiceAccount token a reporter sends the aggregator: a token made
/// for the aggregator is good for nothing else, and one made for anything else is refused here.
pub const TOKEN_AUDIENCE: &str = "inflight.dev/aggregator";
/// Where the injector mounts that token in the proxy (kubelet rotates it in place).
pub const TOKEN_DIR: &str = "/var/run/secrets/inflight.dev/aggregator";
pub const TOKEN_FILE: &str = "/var/run/secrets/inflight.dev/aggregator/token";
/// gRPC metadata carrying it, as a bearer token.
pub const TOKEN_HEADER: &str = "authorization";
