//! Command line and environment.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use inflight_runtime::admin::positive_duration;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "inflight-operator",
    version,
    about = "Reconciles HTTPAutoscalers into KEDA ScaledObjects and the Service's endpoints"
)]
pub struct Config {
    /// Admin server: /metrics, /healthz, /readyz.
    #[arg(long, env = "INFLIGHT_ADMIN_LISTEN", default_value = "0.0.0.0:15094")]
    pub admin_listen: SocketAddr,

    #[command(flatten)]
    pub admin_limits: inflight_runtime::admin::AdminLimits,

    /// The aggregator's gRPC address as KEDA reaches it: the ScaledObjects' `scalerAddress`.
    #[arg(
        long,
        env = "INFLIGHT_AGGREGATOR_ADDRESS",
        default_value = "inflight-aggregator.inflight.svc:9091"
    )]
    pub aggregator_address: String,

    /// Where the operator itself dials the aggregator for the status figures, when it cannot
    /// resolve `--aggregator-address` (an operator run outside the cluster); the certificate is
    /// still checked for the host of `--aggregator-address`.
    #[arg(long, env = "INFLIGHT_AGGREGATOR_DIAL")]
    pub aggregator_dial: Option<String>,

    /// The activator's Service (NAMESPACE/NAME): its ready pods are the endpoints of every
    /// Service in proxy mode.
    #[arg(
        long,
        env = "INFLIGHT_ACTIVATOR_SERVICE",
        default_value = "inflight/inflight-activator",
        value_parser = namespaced_name
    )]
    pub activator_service: (String, String),

    /// The namespace of the operator's own objects: its Lease and the certificate Secrets.
    #[arg(long, env = "POD_NAMESPACE", default_value = "inflight")]
    pub namespace: String,

    /// Reconcile only the HTTPAutoscalers of this namespace (default: every namespace), as KEDA's
    /// WATCH_NAMESPACE does: for a namespaced install, or one test beside another.
    #[arg(long, env = "INFLIGHT_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    #[command(flatten)]
    pub leader: LeaderFlags,

    #[command(flatten)]
    pub certs: crate::certs::CertFlags,

    /// How long the operator waits for a pod's proxy to answer `/readyz` before it counts the
    /// pod as not ready yet.
    #[arg(long, env = "INFLIGHT_READYZ_TIMEOUT", default_value = "300ms", value_parser = positive_duration)]
    pub readyz_timeout: Duration,

    /// Reconcile every HTTPAutoscaler at least this often, whatever changes are seen.
    #[arg(long, env = "INFLIGHT_RESYNC_INTERVAL", default_value = "60s", value_parser = positive_duration)]
    pub resync_interval: Duration,

    /// While a workload has requests in flight, refresh its status (`inFlight`, what `kubectl get
    /// hta` and `kubectl inflight top` show) this often rather than at each resync.
    #[arg(long, env = "INFLIGHT_BUSY_STATUS_INTERVAL", default_value = "5s", value_parser = positive_duration)]
    pub busy_status_interval: Duration,
}

/// Leader election: one replica reconciles, the others wait for its Lease to lapse.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderFlags {
    /// The Lease (`coordination.k8s.io/v1`) in `--namespace` that the replicas contend for.
    #[arg(long, env = "INFLIGHT_LEASE_NAME", default_value = "inflight-operator")]
    pub lease_name: String,

    /// A leader that has not renewed the Lease for this long is replaced.
    #[arg(long, env = "INFLIGHT_LEASE_DURATION", default_value = "15s", value_parser = lease_duration)]
    pub lease_duration: Duration,

    /// This replica's name in the Lease (default: the pod's name, else a random one).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

fn lease_duration(text: &str) -> Result<Duration, String> {
    let d = positive_duration(text)?;
    // The Lease counts whole seconds, and the holder renews a third of it early.
    if d < Duration::from_secs(3) || d > Duration::from_secs(600) {
        return Err(format!("{text:?}: must be between 3s and 10m"));
    }
    Ok(d)
}

/// `NAMESPACE/NAME`, each a DNS label.
pub fn namespaced_name(text: &str) -> Result<(String, String), String> {
    let (ns, name) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not NAMESPACE/NAME"))?;
    for part in [ns, name] {
        let valid = !part.is_empty()
            && part.len() <= 63
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !valid {
            return Err(format!("{text:?}: {part:?} is not a DNS label"));
        }
    }
    Ok((ns.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_the_designs() {
        let c = Config::try_parse_from(["inflight-operator"]).unwrap();
        assert_eq!(
            c.admin_listen.port(),
            inflight_proto::names::OPERATOR_ADMIN_PORT
        );
        assert_eq!(
            c.activator_service,
            ("inflight".to_owned(), "inflight-activator".to_owned())
        );
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        for (flag, value) in [
            ("--activator-service", "inflight-activator"),
            ("--activator-service", "Inflight/x"),
            ("--lease-duration", "1s"),
            ("--readyz-timeout", "0s"),
        ] {
            let e = Config::try_parse_from(["inflight-operator", flag, value]).unwrap_err();
            assert!(e.to_string().contains(value), "{flag} {value}: {e}");
        }
    }
}
