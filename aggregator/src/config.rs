//! Command line, each flag with an environment twin.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// inflight's aggregator: takes the sidecars' and activators' reports, keeps sliding windows per
/// workload and answers KEDA as its external scaler.
#[derive(Debug, Clone, Parser)]
#[command(name = "inflight-aggregator", version)]
pub struct Config {
    /// gRPC: inflight's `Ingest`, the report streams of the proxies and the activators.
    #[arg(long, env = "INFLIGHT_GRPC_LISTEN", default_value = "0.0.0.0:9090")]
    pub grpc_listen: SocketAddr,
    /// gRPC: KEDA's `externalscaler.ExternalScaler`, a port of its own so that TLS and network
    /// policy can admit KEDA alone.
    #[arg(long, env = "INFLIGHT_SCALER_LISTEN", default_value = "0.0.0.0:9091")]
    pub scaler_listen: SocketAddr,
    /// Who may call the scaler. `mtls`: TLS with `--tls-cert`/`--tls-key`, and the caller must
    /// present a client certificate of a CA in `--scaler-client-ca` (KEDA, with the certificate
    /// the operator gives it). `none`: plaintext, anyone (loopback development only).
    #[arg(long, env = "INFLIGHT_SCALER_AUTH", value_enum, default_value = "mtls")]
    pub scaler_auth: crate::scaler::tls::Mode,
    /// The CAs (PEM) whose client certificates the scaler port accepts, read again when the file
    /// changes (the operator's CA bundle, `ca.crt` of its CA Secret).
    #[arg(long, env = "INFLIGHT_SCALER_CLIENT_CA")]
    pub scaler_client_ca: Option<std::path::PathBuf>,
    /// Who may report. `tokenreview`: each report stream carries its pod's projected
    /// ServiceAccount token, reviewed by the API server; the namespace and pod are the token's,
    /// the workload is the pod's `inflight.dev/workload` label, held requests come only from
    /// `--activator-service-accounts`. Needs a Kubernetes API (in a pod, or KUBECONFIG).
    /// `none`: anything that reaches the port reports anything (loopback development only).
    #[arg(
        long,
        env = "INFLIGHT_INGEST_AUTH",
        value_enum,
        default_value = "tokenreview"
    )]
    pub ingest_auth: crate::auth::Mode,
    /// The audience report tokens must be made for.
    #[arg(long, env = "INFLIGHT_TOKEN_AUDIENCE", default_value = inflight_proto::names::TOKEN_AUDIENCE)]
    pub token_audience: String,
    /// The ServiceAccounts (NAMESPACE/NAME, comma-separated) whose pods may report held
    /// requests: the activators'.
    #[arg(
        long,
        env = "INFLIGHT_ACTIVATOR_SERVICE_ACCOUNTS",
        value_delimiter = ',',
        default_value = "inflight-system/inflight-activator"
    )]
    pub activator_service_accounts: Vec<crate::auth::ServiceAccount>,
    /// Reviewed tokens kept (about 200 bytes each); beyond, those expiring soonest go.
    #[arg(long, env = "INFLIGHT_MAX_CACHED_TOKENS", default_value_t = 50_000)]
    pub max_cached_tokens: usize,
    /// HTTPS: the SMI Traffic Metrics API, for the API server's aggregation layer.
    #[arg(long, env = "INFLIGHT_SMI_LISTEN", default_value = "0.0.0.0:6443")]
    pub smi_listen: SocketAddr,
    /// Serving certificate (PEM) of the SMI API and the scaler port, read again when it changes
    /// on the scaler port; without it the SMI API makes a self-signed one at start.
    #[arg(long, env = "INFLIGHT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "INFLIGHT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// SMI API: the TLS handshake and each HTTP/1 request head must arrive within this (also how
    /// long an HTTP/1 keep-alive connection may wait for its next request).
    #[arg(long, env = "INFLIGHT_SMI_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub smi_header_read_timeout: Duration,
    /// SMI API: a connection with no request in progress for this long is closed (h2: GOAWAY).
    #[arg(long, env = "INFLIGHT_SMI_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub smi_idle_timeout: Duration,
    /// SMI API: connections open at once; one more is closed as soon as it is accepted.
    #[arg(long, env = "INFLIGHT_SMI_MAX_CONNECTIONS", default_value_t = 512)]
    pub smi_max_connections: usize,
    /// SMI API: the CA of the API server's front-proxy client certificate (PEM), read again when
    /// it changes; without it, the `requestheader-*` settings of the
    /// `kube-system/extension-apiserver-authentication` ConfigMap, as the API server publishes
    /// them. Either way the SMI port listens only once the CA has been read.
    #[arg(long, env = "INFLIGHT_REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<std::path::PathBuf>,
    /// SMI API, with `--requestheader-client-ca-file`: the common names the front-proxy
    /// certificate may have (comma-separated); empty: any certificate of that CA.
    #[arg(
        long,
        env = "INFLIGHT_REQUESTHEADER_ALLOWED_NAMES",
        value_delimiter = ',',
        requires = "requestheader_client_ca_file"
    )]
    pub requestheader_allowed_names: Vec<String>,
    /// `/metrics`, `/healthz`, `/readyz`, `/readyz/smi`.
    #[arg(long, env = "INFLIGHT_ADMIN_LISTEN", default_value = "0.0.0.0:15093")]
    pub admin_listen: SocketAddr,
    #[command(flatten)]
    pub admin_limits: inflight_runtime::admin::AdminLimits,
    /// The stable window (concurrency), Knative's default; also the window of a trigger that
    /// names none.
    #[arg(long, env = "INFLIGHT_STABLE_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub stable_window: Duration,
    /// The burst window: when it reads at least twice the stable one, its value is answered.
    #[arg(long, env = "INFLIGHT_BURST_WINDOW", default_value = "6s", value_parser = humantime::parse_duration)]
    pub burst_window: Duration,
    /// The longest `window` a trigger may ask for; each workload keeps this many seconds.
    #[arg(long, env = "INFLIGHT_MAX_WINDOW", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_window: Duration,
    /// Let a trigger's `namespace` key name another namespace than its ScaledObject's: whoever
    /// may create a ScaledObject in one namespace could then scale on another's traffic.
    #[arg(long, env = "INFLIGHT_ALLOW_CROSS_NAMESPACE")]
    pub allow_cross_namespace: bool,
    /// On SIGTERM the report and `StreamIsActive` streams end at once and calls in progress
    /// finish; connections still open after this long (a peer that never answers) are dropped.
    #[arg(long, env = "INFLIGHT_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// `StreamIsActive` streams open at once (each watches one workload); more are refused with
    /// `RESOURCE_EXHAUSTED`.
    #[arg(long, env = "INFLIGHT_MAX_PUSH_STREAMS", default_value_t = 10_000)]
    pub max_push_streams: usize,
    /// HTTP/2 streams a gRPC client may have open on one connection (KEDA puts every
    /// ScaledObject's `StreamIsActive` on one).
    #[arg(
        long,
        env = "INFLIGHT_GRPC_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024
    )]
    pub grpc_max_concurrent_streams: u32,
    /// HTTP/2 keepalive: a gRPC connection idle this long is pinged, and closed when the ping is
    /// not answered within as long again, so the streams of a peer that vanished end.
    #[arg(long, env = "INFLIGHT_GRPC_KEEPALIVE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub grpc_keepalive: Duration,
    /// TCP keepalive of gRPC connections: first probe after this long idle, then one every as
    /// long again; three unanswered probes close the connection.
    #[arg(long, env = "INFLIGHT_GRPC_TCP_KEEPALIVE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grpc_tcp_keepalive: Duration,
    /// The longest report interval believed of a reporter: a window ends at most two of them
    /// behind now, and a reporter is dropped after 3 of its intervals counted at most this long
    /// (a reporter cannot make itself immortal by claiming a long interval).
    #[arg(long, env = "INFLIGHT_MAX_REPORT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub max_report_interval: Duration,
    /// After a start, how long until every reporter has found this process (sidecars re-resolve
    /// the aggregators' addresses every 10 s and report every second): until then `GetMetrics`
    /// answers `UNAVAILABLE` rather than a partial sum, and `/readyz` is not ready.
    #[arg(long, env = "INFLIGHT_WARM_UP", default_value = "15s", value_parser = humantime::parse_duration)]
    pub warm_up: Duration,
    /// The most pods tracked for one workload (and, apart, activators reporting for one workload);
    /// a report over it is refused (`RESOURCE_EXHAUSTED`) and counted by reason.
    #[arg(long, env = "INFLIGHT_MAX_PODS_PER_WORKLOAD", default_value_t = 1000)]
    pub max_pods_per_workload: usize,
    /// The most workloads tracked in one namespace.
    #[arg(
        long,
        env = "INFLIGHT_MAX_WORKLOADS_PER_NAMESPACE",
        default_value_t = 1000
    )]
    pub max_workloads_per_namespace: usize,
    /// The most workloads tracked in all (each keeps a ring of about 2 KiB).
    #[arg(long, env = "INFLIGHT_MAX_WORKLOADS", default_value_t = 10_000)]
    pub max_workloads: usize,
    /// The most pods tracked in all (about 1.5 KiB each with their SMI figures).
    #[arg(long, env = "INFLIGHT_MAX_PODS", default_value_t = 50_000)]
    pub max_pods: usize,
}

impl Config {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.scaler_auth == crate::scaler::tls::Mode::Mtls
            && (self.tls_cert.is_none() || self.scaler_client_ca.is_none())
        {
            return Err(
                "--scaler-auth mtls needs --tls-cert, --tls-key and --scaler-client-ca \
                 (the operator's certificate Secrets); pass --scaler-auth none for loopback \
                 development"
                    .into(),
            );
        }
        for (flag, d) in [
            ("--grpc-keepalive", self.grpc_keepalive),
            ("--grpc-tcp-keepalive", self.grpc_tcp_keepalive),
        ] {
            if d < Duration::from_secs(1) {
                return Err(format!("{flag} {d:?} is under 1s"));
            }
        }
        if self.smi_header_read_timeout.is_zero() || self.smi_idle_timeout.is_zero() {
            return Err("--smi-header-read-timeout and --smi-idle-timeout must be above 0".into());
        }
        if self.max_push_streams == 0
            || self.smi_max_connections == 0
            || self.grpc_max_concurrent_streams == 0
        {
            return Err("--max-push-streams, --smi-max-connections and --grpc-max-concurrent-streams must be above 0".into());
        }
        let second = Duration::from_secs(1);
        for (flag, d) in [
            ("--max-window", self.max_window),
            ("--stable-window", self.stable_window),
            ("--max-report-interval", self.max_report_interval),
        ] {
            if d < second {
                return Err(format!("{flag} {d:?} must be at least 1s"));
            }
        }
        for (flag, n) in [
            ("--max-pods-per-workload", self.max_pods_per_workload),
            (
                "--max-workloads-per-namespace",
                self.max_workloads_per_namespace,
            ),
            ("--max-workloads", self.max_workloads),
            ("--max-pods", self.max_pods),
        ] {
            if n == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.burst_window.is_zero() || self.burst_window > self.stable_window {
            return Err(format!(
                "--burst-window {:?} must be above 0 and at most --stable-window {:?}",
                self.burst_window, self.stable_window
            ));
        }
        if self.stable_window > self.max_window {
            return Err(format!(
                "--stable-window {:?} exceeds --max-window {:?}",
                self.stable_window, self.max_window
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults, with the certificate files a pod has mounted.
    fn config(args: &[&str]) -> Config {
        let files = [
            "--tls-cert",
            "tls.crt",
            "--tls-key",
            "tls.key",
            "--scaler-client-ca",
            "ca.crt",
        ];
        Config::try_parse_from(
            std::iter::once("inflight-aggregator")
                .chain(files)
                .chain(args.iter().copied()),
        )
        .unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        config(&[]).validate().unwrap();
    }

    #[test]
    fn the_scaler_is_mutual_tls_unless_said_otherwise() {
        let bare = Config::try_parse_from(["inflight-aggregator"]).unwrap();
        assert_eq!(bare.scaler_auth, crate::scaler::tls::Mode::Mtls);
        let e = bare.validate().unwrap_err();
        assert!(e.contains("--scaler-auth none"), "{e}");
        let open =
            Config::try_parse_from(["inflight-aggregator", "--scaler-auth", "none"]).unwrap();
        open.validate().unwrap();
    }

    #[test]
    fn windows_under_a_second_are_refused() {
        for args in [
            &[
                "--max-window",
                "500ms",
                "--stable-window",
                "400ms",
                "--burst-window",
                "100ms",
            ][..],
            &["--stable-window", "500ms", "--burst-window", "100ms"],
            &["--max-report-interval", "10ms"],
            &["--max-pods", "0"],
        ] {
            let e = config(args).validate().unwrap_err();
            assert!(e.contains(args[0]), "{args:?}: {e}");
        }
    }
}
