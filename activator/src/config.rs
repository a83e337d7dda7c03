//! The command line, each flag with its environment twin.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use inflight_forward::server::Connections;
use inflight_proto::v1::PodIdentity;
use inflight_report::identity::{self, parse_namespace, parse_report_interval};
use inflight_runtime::admin::{positive_duration, AdminLimits};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "inflight-activator",
    version,
    about = "Holds requests for workloads with no ready pod, wakes them, and forwards the requests once a pod is ready"
)]
pub struct Config {
    /// Where the Services in proxy mode send their requests.
    #[arg(long, env = "INFLIGHT_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// `/metrics`, `/healthz`, `/readyz`, `/stats`.
    #[arg(long, env = "INFLIGHT_ADMIN_LISTEN", default_value = "0.0.0.0:15091")]
    pub admin_listen: SocketAddr,

    /// The aggregators to report held requests to (`host:port` or `http://host:port`,
    /// comma-separated); a name is resolved to every address it has (a headless Service).
    #[arg(long, env = "INFLIGHT_AGGREGATOR", value_delimiter = ',')]
    pub aggregator: Vec<String>,

    /// While requests are held for a workload, ask each of its pods' proxies for `/readyz`
    /// this often.
    #[arg(long, env = "INFLIGHT_PROBE_INTERVAL", default_value = "25ms", value_parser = positive_duration)]
    pub probe_interval: Duration,

    /// How long one `/readyz` probe may take.
    #[arg(long, env = "INFLIGHT_PROBE_TIMEOUT", default_value = "1s", value_parser = positive_duration)]
    pub probe_timeout: Duration,

    /// How often held requests are reported while any are held (100ms to 60s); a workload's
    /// first is reported at once.
    #[arg(long, env = "INFLIGHT_REPORT_INTERVAL", default_value = "1s", value_parser = parse_report_interval)]
    pub report_interval: Duration,

    /// The projected ServiceAccount token (audience `inflight.dev/aggregator`) sent with each
    /// report stream; the injector mounts it here and kubelet rotates it. No file: no token
    /// (an aggregator with `--ingest-auth none`).
    #[arg(long, env = "INFLIGHT_TOKEN_FILE", default_value = inflight_proto::names::TOKEN_FILE)]
    pub token_file: std::path::PathBuf,

    /// The cluster's DNS domain, for `<svc>.<ns>.svc.<domain>` host names.
    #[arg(long, env = "INFLIGHT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Workloads this activator holds requests for at once; a request for one more is answered
    /// 503.
    #[arg(long, env = "INFLIGHT_MAX_WORKLOADS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_workloads: u32,

    /// Watch HTTPAutoscalers and pods in this namespace only (default: all).
    #[arg(long, env = "WATCH_NAMESPACE", value_parser = parse_namespace)]
    pub watch_namespace: Option<String>,

    /// After SIGTERM, keep serving at least this long (`/readyz` answers 503 at once, so the
    /// operator takes this activator out of the Services' endpoints meanwhile).
    #[arg(long, env = "INFLIGHT_DRAIN_PERIOD", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,

    /// After SIGTERM, requests still held this long after are answered 503 with `Retry-After`,
    /// and connections are closed once their responses are out. Keep it under the pod's
    /// termination grace period.
    #[arg(long, env = "INFLIGHT_DRAIN_TIMEOUT", default_value = "25s", value_parser = positive_duration)]
    pub drain_timeout: Duration,

    /// Answer 504 when a pod has not sent response headers within this long of the client
    /// having sent its whole request.
    #[arg(long, env = "INFLIGHT_UPSTREAM_TIMEOUT", value_parser = positive_duration)]
    pub upstream_timeout: Option<Duration>,

    /// Add X-Forwarded-For and X-Forwarded-Proto to forwarded requests.
    #[arg(long, env = "INFLIGHT_FORWARDED_HEADERS", default_value_t = true, action = ArgAction::Set)]
    pub forwarded_headers: bool,

    /// Worker threads, each with its own event loop (default: the CPUs this process may use, at
    /// most 4). The admin server, the watches, the probes and the reports run on a thread of
    /// their own besides.
    #[arg(long, env = "INFLIGHT_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    #[command(flatten)]
    pub connections: Connections,

    #[command(flatten)]
    pub admin_limits: AdminLimits,

    /// This pod's name (downward API), which its reports carry.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// This pod's namespace (downward API); else its service account's.
    #[arg(long, env = "POD_NAMESPACE", value_parser = parse_namespace)]
    pub pod_namespace: Option<String>,

    /// This pod's IP (downward API).
    #[arg(long, env = "POD_IP", default_value = "")]
    pub pod_ip: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "no namespace for this activator's reports: POD_NAMESPACE is not set and there is no \
         service account namespace at {}; set POD_NAMESPACE from the downward API or pass \
         --pod-namespace",
        identity::SERVICE_ACCOUNT_NAMESPACE
    )]
    NoNamespace,
}

/// Client connections open at once by default: each request held keeps its client's
/// connection open, and one activator holds up to 1,000 per workload for many workloads (the
/// sidecar's default, 4,096, is for one pod's clients).
pub const DEFAULT_MAX_CONNECTIONS: &str = "16384";

impl Config {
    /// The command line, with the activator's own default for the shared `--max-connections`.
    pub fn command() -> clap::Command {
        <Self as CommandFactory>::command().mut_arg("data_max_connections", |a| {
            a.default_value(DEFAULT_MAX_CONNECTIONS)
        })
    }

    /// Parses `args` (the program's name first) as [`Config::command`] says.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)
    }

    pub fn workers(&self) -> usize {
        match self.threads {
            Some(n) => usize::from(n).max(1),
            None => std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1)
                .clamp(1, 4),
        }
    }

    /// Who the reports are from.
    pub fn identity(&self) -> Result<PodIdentity, ConfigError> {
        let namespace = identity::namespace(
            self.pod_namespace.as_deref(),
            Path::new(identity::SERVICE_ACCOUNT_NAMESPACE),
        )
        .ok_or(ConfigError::NoNamespace)?;
        Ok(PodIdentity {
            namespace,
            pod: identity::pod_name(self.pod_name.as_deref()),
            workload: None,
            pod_ip: self.pod_ip.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_design() {
        let c = Config::try_from_args(["inflight-activator"]).map_err(|e| e.to_string());
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.port(), inflight_proto::names::ACTIVATOR_PORT);
        assert_eq!(
            c.admin_listen.port(),
            inflight_proto::names::ACTIVATOR_ADMIN_PORT
        );
        assert_eq!(c.probe_interval, Duration::from_millis(25));
        assert!(c.drain_timeout > c.drain_period);
        assert_eq!(c.connections.max_connections, 16384);
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for args in [
            ["inflight-activator", "--probe-interval", "0s"],
            ["inflight-activator", "--report-interval", "5ms"],
            ["inflight-activator", "--pod-namespace", "Shop"],
            ["inflight-activator", "--max-workloads", "0"],
        ] {
            let e = Config::try_from_args(args).err().map(|e| e.to_string());
            assert!(e.is_some(), "{args:?} was accepted");
        }
    }
}
