//! Command line and environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use inflight_runtime::admin::positive_duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "inflight-injector",
    version,
    about = "Mutating admission webhook: adds inflight-proxy to the pods of namespaces labelled inflight.dev/inject=enabled"
)]
pub struct Config {
    /// HTTPS address of the webhook (`POST /mutate`).
    #[arg(long, env = "INFLIGHT_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Admin server: /metrics, /healthz, /readyz.
    #[arg(long, env = "INFLIGHT_ADMIN_LISTEN", default_value = "0.0.0.0:15092")]
    pub admin_listen: SocketAddr,

    #[command(flatten)]
    pub admin_limits: inflight_runtime::admin::AdminLimits,

    /// Serving certificate chain (PEM); read again when it changes.
    #[arg(long, env = "INFLIGHT_TLS_CERT")]
    pub tls_cert: PathBuf,

    /// Serving key (PEM); read again when it changes.
    #[arg(long, env = "INFLIGHT_TLS_KEY")]
    pub tls_key: PathBuf,

    /// How often the certificate files are looked at for a change.
    #[arg(long, env = "INFLIGHT_TLS_RELOAD_INTERVAL", default_value = "2s", value_parser = positive_duration)]
    pub tls_reload_interval: Duration,

    #[command(flatten)]
    pub proxy: ProxyFlags,

    /// Add the proxy as a native sidecar (an init container with restartPolicy: Always, which
    /// Kubernetes has had since 1.29): `auto` asks the API server its version at start.
    #[arg(long, env = "INFLIGHT_NATIVE_SIDECAR", value_enum, default_value_t = NativeSidecar::Auto)]
    pub native_sidecar: NativeSidecar,

    #[command(flatten)]
    pub limits: WebhookLimits,
}

/// Whether the proxy is added as a native sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecar {
    /// On Kubernetes 1.29 and later (the API server's version, read at start).
    Auto,
    Always,
    Never,
}

/// What the injected container is made of.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyFlags {
    /// Image of inflight-proxy.
    #[arg(long, env = "INFLIGHT_PROXY_IMAGE")]
    pub proxy_image: String,

    /// imagePullPolicy of the proxy container (default: Kubernetes' own default for the image).
    #[arg(long, env = "INFLIGHT_PROXY_IMAGE_PULL_POLICY", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub proxy_image_pull_policy: Option<String>,

    /// Aggregator addresses the proxies report to (URL or HOST:PORT), comma-separated.
    #[arg(long, env = "INFLIGHT_AGGREGATOR", value_delimiter = ',')]
    pub aggregator: Vec<String>,

    /// The proxy's CPU request.
    #[arg(long, env = "INFLIGHT_PROXY_CPU_REQUEST", default_value = "10m")]
    pub proxy_cpu_request: String,

    /// The proxy's memory request.
    #[arg(long, env = "INFLIGHT_PROXY_MEMORY_REQUEST", default_value = "16Mi")]
    pub proxy_memory_request: String,

    /// The proxy's CPU limit (default: none, so it is never throttled in front of the app).
    #[arg(long, env = "INFLIGHT_PROXY_CPU_LIMIT")]
    pub proxy_cpu_limit: Option<String>,

    /// The proxy's memory limit.
    #[arg(long, env = "INFLIGHT_PROXY_MEMORY_LIMIT", default_value = "128Mi")]
    pub proxy_memory_limit: Option<String>,

    /// User the proxy runs as (its image has no user database, so a number).
    #[arg(long, env = "INFLIGHT_PROXY_UID", default_value_t = 65532, value_parser = clap::value_parser!(i64).range(1..=2_147_483_647))]
    pub proxy_uid: i64,

    /// The longest the proxy keeps serving after it is told to stop, so callers notice the pod
    /// is leaving; shortened to fit the pod's terminationGracePeriodSeconds.
    #[arg(long, env = "INFLIGHT_PROXY_DRAIN_PERIOD", default_value = "5s", value_parser = humantime::parse_duration)]
    pub proxy_drain_period: Duration,
}

/// What the webhook port allows its clients.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct WebhookLimits {
    /// Close a connection whose TLS handshake or request head has not arrived within this long.
    #[arg(id = "webhook_header_read_timeout", long = "header-read-timeout", env = "INFLIGHT_HEADER_READ_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub header_read_timeout: Duration,

    /// Close a connection idle (no request in progress) this long.
    #[arg(long, env = "INFLIGHT_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// Answer 408 to a request whose body has not arrived whole within this long.
    #[arg(long, env = "INFLIGHT_BODY_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub body_timeout: Duration,

    /// Largest AdmissionReview accepted, in bytes (a pod is at most about 1.5 MB in etcd).
    #[arg(long, env = "INFLIGHT_MAX_BODY_BYTES", default_value_t = 4 << 20, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_body_bytes: u32,

    /// Connections open at once; one more is closed at once.
    #[arg(id = "webhook_max_connections", long = "max-connections", env = "INFLIGHT_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_connections: u16,
}

impl From<WebhookLimits> for inflight_runtime::https::Limits {
    fn from(l: WebhookLimits) -> Self {
        Self {
            header_read_timeout: l.header_read_timeout,
            idle_timeout: l.idle_timeout,
            max_connections: usize::from(l.max_connections),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Config::command().debug_assert();
    }
}
