//! Command line and environment. Every flag has an environment twin, so the
//! injector can set them on the container and scripts can set them on a shell.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::{ArgAction, Parser};
use http::uri::{Authority, PathAndQuery};
pub use inflight_forward::server::Connections;
use inflight_proto::v1::{PodIdentity, WorkloadRef};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "inflight-proxy",
    version,
    about = "Per-pod reverse proxy: counts the requests in flight to the app and reports them to the inflight aggregators"
)]
pub struct Config {
    /// Address clients connect to (HTTP/1.1 and h2c on one port).
    #[arg(long, env = "INFLIGHT_LISTEN", default_value = "0.0.0.0:15080")]
    pub listen: SocketAddr,

    /// Admin server: /metrics, /healthz, /readyz, /stats.
    #[arg(long, env = "INFLIGHT_ADMIN_LISTEN", default_value = "0.0.0.0:15090")]
    pub admin_listen: SocketAddr,

    #[command(flatten)]
    pub admin_limits: inflight_runtime::admin::AdminLimits,

    /// The app, as HOST:PORT (normally 127.0.0.1:<port>).
    #[arg(long, env = "INFLIGHT_UPSTREAM", value_parser = parse_upstream)]
    pub upstream: Authority,

    /// Aggregator addresses (URL or HOST:PORT), comma-separated; a name that
    /// resolves to several addresses gets a stream to each. None: no reports.
    #[arg(long, env = "INFLIGHT_AGGREGATOR", value_delimiter = ',')]
    pub aggregator: Vec<String>,

    /// The workload this pod belongs to, KIND/NAME (e.g. deployment/web).
    /// Default: the pod itself (pod/<POD_NAME>).
    #[arg(long, env = "INFLIGHT_WORKLOAD", value_parser = parse_workload)]
    pub workload: Option<(String, String)>,

    /// How often a report is sent (100ms to 60s).
    #[arg(long, env = "INFLIGHT_REPORT_INTERVAL", default_value = "1s", value_parser = parse_report_interval)]
    pub report_interval: Duration,

    /// The projected ServiceAccount token (audience `inflight.dev/aggregator`) sent with each
    /// report stream; the injector mounts it here and kubelet rotates it. No file: no token
    /// (an aggregator with `--ingest-auth none`).
    #[arg(long, env = "INFLIGHT_TOKEN_FILE", default_value = inflight_proto::names::TOKEN_FILE)]
    pub token_file: std::path::PathBuf,

    /// After SIGTERM, keep serving at least this long, so callers notice the
    /// pod is leaving before its port closes.
    #[arg(long, env = "INFLIGHT_DRAIN_PERIOD", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_period: Duration,

    /// After SIGTERM, exit after at most this long even with requests in
    /// flight (keep it below the pod's terminationGracePeriodSeconds).
    #[arg(long, env = "INFLIGHT_DRAIN_TIMEOUT", default_value = "25s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// Serve `GET /drain` on the admin port to callers sending this token in
    /// the `X-Inflight-Drain-Token` header (the app's preStop hook, which the
    /// injector adds): it drains as SIGTERM does, answers once drained, then
    /// exits. Without it, `/drain` is not served.
    #[arg(long, env = "INFLIGHT_DRAIN_TOKEN", hide_env_values = true)]
    pub drain_token: Option<String>,

    /// Answer 504 when the app has not sent response headers within this long
    /// of the client having sent its whole request.
    #[arg(long, env = "INFLIGHT_UPSTREAM_TIMEOUT", value_parser = parse_positive_duration)]
    pub upstream_timeout: Option<Duration>,

    /// Add X-Forwarded-For and X-Forwarded-Proto to forwarded requests.
    #[arg(long, env = "INFLIGHT_FORWARDED_HEADERS", default_value_t = true, action = ArgAction::Set)]
    pub forwarded_headers: bool,

    /// Proxies (CIDRs or addresses, comma-separated) whose X-Forwarded-For
    /// is appended to and whose X-Forwarded-Proto is kept; from any other
    /// peer both are replaced. Default: none.
    #[arg(long, env = "INFLIGHT_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Worker threads, each with its own event loop (default: 2, or 1 when
    /// the process may use only one CPU, like Istio's sidecar). The admin
    /// server and the reporter run on a thread of their own besides.
    #[arg(long, env = "INFLIGHT_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    #[command(flatten)]
    pub connections: Connections,

    /// This pod's name (downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// This pod's namespace (downward API); else the namespace of the pod's
    /// service account. Required when reporting to an aggregator.
    #[arg(long, env = "POD_NAMESPACE", value_parser = parse_namespace)]
    pub pod_namespace: Option<String>,

    /// This pod's IP (downward API).
    #[arg(long, env = "POD_IP", default_value = "")]
    pub pod_ip: String,

    /// `/readyz`: the path of the app's own readiness check (an HTTP GET;
    /// 2xx or 3xx is ready, as for the kubelet's httpGet probe). Without
    /// it, ready means the app's port accepts a connection.
    #[arg(long, env = "INFLIGHT_APP_READY_PATH", value_parser = parse_ready_path)]
    pub app_ready_path: Option<PathAndQuery>,

    /// `/readyz`: the port of the app's readiness check, on the upstream's
    /// host (default: the upstream's port). Alone, a TCP check on it.
    #[arg(long, env = "INFLIGHT_APP_READY_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub app_ready_port: Option<u16>,

    /// `/readyz`: how long the app's readiness check may take (the kubelet's
    /// default timeoutSeconds).
    #[arg(long, env = "INFLIGHT_APP_READY_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub app_ready_timeout: Duration,
}

use inflight_report::identity::{parse_namespace, parse_report_interval};
pub use inflight_report::identity::{
    MAX_REPORT_INTERVAL, MIN_REPORT_INTERVAL, SERVICE_ACCOUNT_NAMESPACE,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "no namespace for this pod's reports: POD_NAMESPACE is not set and there is no \
         service account namespace at {SERVICE_ACCOUNT_NAMESPACE}; set POD_NAMESPACE from the \
         downward API (fieldRef: metadata.namespace) or pass --pod-namespace"
    )]
    NoNamespace,
}

fn parse_upstream(text: &str) -> Result<Authority, String> {
    let authority: Authority = text
        .parse()
        .map_err(|e| format!("{text:?} is not HOST:PORT: {e}"))?;
    if authority.port_u16().is_none() {
        return Err(format!(
            "{text:?} has no port: give the app as HOST:PORT, e.g. 127.0.0.1:8080"
        ));
    }
    if text.contains('@') || text.contains('/') {
        return Err(format!("{text:?} is not HOST:PORT"));
    }
    Ok(authority)
}

fn parse_workload(text: &str) -> Result<(String, String), String> {
    match text.split_once('/') {
        Some((kind, name)) if !kind.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((kind.to_ascii_lowercase(), name.to_owned()))
        }
        _ => Err(format!("{text:?} is not KIND/NAME, e.g. deployment/web")),
    }
}

fn parse_ready_path(text: &str) -> Result<PathAndQuery, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?}: a path starts with '/', e.g. /ready"));
    }
    text.parse::<PathAndQuery>()
        .map_err(|e| format!("{text:?} is not a path: {e}"))
}

fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{text:?} is not a CIDR (10.0.0.0/8) or an address"))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(d)
}

/// A sidecar shares its pod's CPU with the app: a worker per CPU would be
/// 64 event loops on a 64-core node without CPU limits. Two, as Istio's
/// sidecar defaults to, or one when only one CPU may be used.
pub fn default_workers(cpus: usize) -> usize {
    cpus.clamp(1, 2)
}

impl Config {
    /// The pod's name: POD_NAME, else the host name (a pod's host name is its name).
    pub fn pod_name(&self) -> String {
        inflight_report::identity::pod_name(self.pod_name.as_deref())
    }

    /// Worker threads: `--threads`, else [`default_workers`] of the CPUs
    /// this process may use.
    pub fn workers(&self) -> usize {
        match self.threads {
            Some(n) => usize::from(n).max(1),
            None => default_workers(
                std::thread::available_parallelism()
                    .map(usize::from)
                    .unwrap_or(1),
            ),
        }
    }

    /// The pod's namespace: POD_NAMESPACE, else its service account's, as
    /// Kubernetes clients find it in a pod.
    pub fn namespace(&self) -> Option<String> {
        self.namespace_from(Path::new(SERVICE_ACCOUNT_NAMESPACE))
    }

    fn namespace_from(&self, service_account: &Path) -> Option<String> {
        inflight_report::identity::namespace(self.pod_namespace.as_deref(), service_account)
    }

    /// Who the reports are from. Without a namespace there is no identity:
    /// guessing `default` would file the pod's load under another workload.
    pub fn identity(&self) -> Result<PodIdentity, ConfigError> {
        self.identity_with(self.namespace())
    }

    fn identity_with(&self, namespace: Option<String>) -> Result<PodIdentity, ConfigError> {
        let namespace = namespace.ok_or(ConfigError::NoNamespace)?;
        let pod = self.pod_name();
        let (kind, name) = self
            .workload
            .clone()
            .unwrap_or_else(|| ("pod".to_owned(), pod.clone()));
        Ok(PodIdentity {
            namespace: namespace.clone(),
            pod,
            workload: Some(WorkloadRef {
                namespace,
                kind,
                name,
            }),
            pod_ip: self.pod_ip.clone(),
        })
    }

    /// How `/readyz` asks the app whether it is ready.
    pub fn app_check(&self) -> inflight_runtime::probe::Check {
        inflight_runtime::probe::Check::new(
            self.upstream.host(),
            self.upstream.port_u16().unwrap_or(80),
            self.app_ready_path.clone(),
            self.app_ready_port,
            self.app_ready_timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("inflight-proxy").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_design_page() {
        let c = parse(&["--upstream", "127.0.0.1:8080", "--pod-name", "web-1"]);
        let c = c.map_err(|e| e.to_string());
        assert!(c.is_ok(), "{c:?}");
        let Ok(c) = c else { return };
        assert_eq!(c.listen.port(), inflight_proto::names::PROXY_PORT);
        assert_eq!(
            c.admin_listen.port(),
            inflight_proto::names::PROXY_ADMIN_PORT
        );
        assert_eq!(c.report_interval, Duration::from_secs(1));
        assert_eq!(c.drain_period, Duration::from_secs(5));
        assert!(c.forwarded_headers);
        assert_eq!(c.app_ready_timeout, Duration::from_secs(1));
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.connections.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.connections.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.connections.max_connections, 4096);
        assert_eq!(c.connections.tcp_keepalive, Duration::from_secs(30));
        assert_eq!(c.connections.tunnel_idle_timeout, Duration::from_secs(3600));
        let id = c.identity_with(Some("shop".into())).unwrap_or_default();
        let w = id.workload.unwrap_or_default();
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("pod", "web-1"));
        assert_eq!(
            (id.namespace.as_str(), w.namespace.as_str()),
            ("shop", "shop")
        );
    }

    #[test]
    fn report_interval_is_bounded() {
        for (text, ok) in [
            ("1ms", false),
            ("99ms", false),
            ("100ms", true),
            ("1s", true),
            ("60s", true),
            ("61s", false),
            ("49days", false),
        ] {
            let c = parse(&["--upstream", "127.0.0.1:1", "--report-interval", text]);
            match (c, ok) {
                (Ok(c), true) => assert_eq!(
                    Ok(c.report_interval),
                    humantime::parse_duration(text).map_err(|_| ())
                ),
                (Err(e), false) => {
                    assert!(e.to_string().contains("must be from 100ms to 1m"), "{e}")
                }
                (c, _) => panic!("{text}: {c:?}"),
            }
        }
    }

    #[test]
    fn a_missing_namespace_is_an_error_not_default() {
        let c = parse(&["--upstream", "127.0.0.1:1", "--pod-name", "web-1"]);
        let Ok(c) = c else {
            return assert!(c.is_ok(), "{c:?}");
        };
        let nowhere = Path::new("/nonexistent/serviceaccount/namespace");
        assert_eq!(c.namespace_from(nowhere), None);
        assert_eq!(c.identity_with(None), Err(ConfigError::NoNamespace));
        let message = ConfigError::NoNamespace.to_string();
        assert!(message.contains("POD_NAMESPACE is not set"), "{message}");
        // The service account's namespace is the fallback, as for client-go.
        let dir = std::env::temp_dir().join(format!("inflight-ns-{}", std::process::id()));
        let file = dir.join("namespace");
        let written = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, "shop\n"));
        assert!(written.is_ok(), "{written:?}");
        assert_eq!(c.namespace_from(&file).as_deref(), Some("shop"));
        let _ = std::fs::remove_dir_all(&dir);
        // POD_NAMESPACE wins, and must be a namespace name.
        let c = parse(&["--upstream", "127.0.0.1:1", "--pod-namespace", "web"]);
        assert_eq!(
            c.ok().and_then(|c| c.namespace_from(nowhere)).as_deref(),
            Some("web")
        );
        for bad in ["", "Shop", "-x", &"a".repeat(64)] {
            let c = parse(&["--upstream", "127.0.0.1:1", "--pod-namespace", bad]);
            assert!(c.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn app_readiness_flags() {
        let c = parse(&[
            "--upstream",
            "127.0.0.1:8080",
            "--app-ready-path",
            "/healthz/ready",
            "--app-ready-port",
            "8081",
            "--app-ready-timeout",
            "3s",
        ]);
        assert_eq!(
            c.ok().map(|c| c.app_check()),
            Some(inflight_runtime::probe::Check::Http {
                addr: "127.0.0.1:8081".into(),
                path: PathAndQuery::from_static("/healthz/ready"),
                timeout: Duration::from_secs(3),
            })
        );
        let c = parse(&["--upstream", "127.0.0.1:8080"]);
        assert_eq!(
            c.ok().map(|c| c.app_check()),
            Some(inflight_runtime::probe::Check::Tcp {
                addr: "127.0.0.1:8080".into(),
                timeout: Duration::from_secs(1),
            })
        );
        for bad in [
            ["--app-ready-path", "ready"],
            ["--app-ready-port", "0"],
            ["--app-ready-timeout", "0s"],
        ] {
            let c = parse(&["--upstream", "127.0.0.1:8080", bad[0], bad[1]]);
            assert!(c.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let e = parse(&["--upstream", "127.0.0.1"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("has no port"), "{e}");
        let e = parse(&["--upstream", "127.0.0.1:1", "--workload", "web"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("is not KIND/NAME"), "{e}");
        let e = parse(&["--upstream", "127.0.0.1:1", "--upstream-timeout", "0s"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("more than zero"), "{e}");
        let e = parse(&[
            "--upstream",
            "127.0.0.1:1",
            "--trusted-proxies",
            "10.0.0.0/33",
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("is not a CIDR"), "{e}");
    }

    #[test]
    fn trusted_proxies_take_cidrs_and_addresses() {
        let c = parse(&[
            "--upstream",
            "127.0.0.1:1",
            "--trusted-proxies",
            "10.1.2.3/8, 192.168.1.7,fd00::/8",
        ]);
        let nets: Vec<String> = c
            .map(|c| c.trusted_proxies.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
    }

    #[test]
    fn workers_default_to_at_most_two_whatever_the_cpus() {
        assert_eq!(default_workers(64), 2);
        assert_eq!(default_workers(2), 2);
        assert_eq!(default_workers(1), 1);
        assert_eq!(default_workers(0), 1);
        let c = parse(&["--upstream", "127.0.0.1:1"]).map(|c| c.workers());
        assert!(matches!(c, Ok(1 | 2)), "{c:?}");
        let c = parse(&["--upstream", "127.0.0.1:1", "--threads", "8"]).map(|c| c.workers());
        assert_eq!(c.ok(), Some(8));
        assert!(parse(&["--upstream", "127.0.0.1:1", "--threads", "0"]).is_err());
    }

    #[test]
    fn workload_kind_is_lowercased() {
        let c = parse(&["--upstream", "127.0.0.1:1", "--workload", "Deployment/web"]);
        assert_eq!(
            c.ok().and_then(|c| c.workload),
            Some(("deployment".into(), "web".into()))
        );
    }
}
