//! The bootstrap's flags, each with its `INFLIGHT_…` environment twin, and the lifetimes they make.

use std::time::Duration;

use clap::ArgAction;

use super::plan::Policy;

const MINUTE: u64 = 60;
const DAY: u64 = 86_400;

/// TLS bootstrap: a CA of the operator's own, the serving certificates of the injector's webhook
/// and the aggregator (its APIService and its scaler port), kept in Secrets of the operator's
/// namespace, and KEDA's client certificate for the scaler port in KEDA's namespace, all renewed
/// before they expire. Off when cert-manager (or anyone else) supplies those Secrets.
#[derive(Debug, Clone, clap::Args)]
pub struct CertFlags {
    /// Make and renew the certificates (`false`: cert-manager or another tool supplies the
    /// Secrets and the caBundles, and the operator leaves them alone).
    #[arg(long, env = "INFLIGHT_TLS_BOOTSTRAP", default_value_t = true, action = ArgAction::Set)]
    pub tls_bootstrap: bool,

    /// The Secret of the CA (`tls.crt`, `tls.key`, and the bundle of CAs to trust in `ca.crt`).
    #[arg(long, env = "INFLIGHT_CA_SECRET", default_value = "inflight-ca", value_parser = dns_subdomain)]
    pub ca_secret: String,

    /// The injector's serving certificate Secret (`kubernetes.io/tls`).
    #[arg(long, env = "INFLIGHT_INJECTOR_SECRET", default_value = "inflight-injector-tls", value_parser = dns_subdomain)]
    pub injector_secret: String,

    /// The injector's Service: its certificate is for `<service>.<namespace>.svc` and the
    /// other names a client in the cluster may dial.
    #[arg(long, env = "INFLIGHT_INJECTOR_SERVICE", default_value = "inflight-injector", value_parser = dns_label)]
    pub injector_service: String,

    /// The MutatingWebhookConfiguration whose webhooks get the CA bundle (empty: no injector, so
    /// no injector certificate either).
    #[arg(long, env = "INFLIGHT_WEBHOOK_CONFIGURATION", default_value = "inflight-injector", value_parser = optional_subdomain)]
    pub webhook_configuration: String,

    /// The aggregator's serving certificate Secret (`kubernetes.io/tls`), for its SMI API and its
    /// scaler port.
    #[arg(long, env = "INFLIGHT_AGGREGATOR_SECRET", default_value = "inflight-aggregator-tls", value_parser = dns_subdomain)]
    pub aggregator_secret: String,

    /// The aggregator's Service, named in its certificate like the injector's.
    #[arg(long, env = "INFLIGHT_AGGREGATOR_SERVICE", default_value = "inflight-aggregator", value_parser = dns_label)]
    pub aggregator_service: String,

    /// The APIService whose `spec.caBundle` gets the CA bundle (empty: the SMI API is not
    /// registered; the aggregator still gets its certificate, for the scaler port).
    #[arg(long, env = "INFLIGHT_APISERVICE", default_value = "v1alpha1.metrics.smi-spec.io", value_parser = optional_subdomain)]
    pub apiservice: String,

    /// KEDA's namespace: where KEDA reads the Secrets of ClusterTriggerAuthentications (its
    /// `KEDA_CLUSTER_OBJECT_NAMESPACE`), so where KEDA's client certificate goes.
    #[arg(long, env = "INFLIGHT_KEDA_NAMESPACE", default_value = "keda", value_parser = dns_label)]
    pub keda_namespace: String,

    /// The Secret in `--keda-namespace` with KEDA's client certificate for the aggregator's scaler
    /// port (`tls.crt`, `tls.key`) and the CAs KEDA trusts it by (`ca.crt`).
    #[arg(long, env = "INFLIGHT_KEDA_CLIENT_SECRET", default_value = "inflight-keda", value_parser = dns_subdomain)]
    pub keda_client_secret: String,

    /// The ClusterTriggerAuthentication every ScaledObject's trigger names, which hands KEDA that
    /// Secret (empty: none, and the aggregator's scaler port must be plaintext,
    /// `--scaler-auth none`).
    #[arg(long, env = "INFLIGHT_TRIGGER_AUTHENTICATION", default_value = "inflight-keda", value_parser = optional_subdomain)]
    pub trigger_authentication: String,

    /// Lifetime of a serving certificate (1m to 3650d).
    #[arg(long, env = "INFLIGHT_CERT_VALIDITY", default_value = "90d", value_parser = cert_validity)]
    pub cert_validity: Duration,

    /// Renew a serving certificate this long before it expires (default: a third of
    /// --cert-validity; less than it, and less than --ca-renew-before).
    #[arg(long, env = "INFLIGHT_CERT_RENEW_BEFORE", value_parser = renew_before)]
    pub renew_before: Option<Duration>,

    /// Lifetime of the CA (1m to 10950d, 30 years).
    #[arg(long, env = "INFLIGHT_CA_VALIDITY", default_value = "1825d", value_parser = ca_validity)]
    pub ca_validity: Duration,

    /// Replace the CA this long before it expires (default: a third of --ca-validity).
    #[arg(long, env = "INFLIGHT_CA_RENEW_BEFORE", value_parser = renew_before)]
    pub ca_renew_before: Option<Duration>,

    /// How long a replaced CA stays in the caBundles after the last serving certificate moved to
    /// the new one (0 to 1d): long enough for the kubelet to update the pods' Secret volumes (its
    /// sync period and its cache, a minute each by default) and for the servers to read the files.
    #[arg(long, env = "INFLIGHT_CA_OVERLAP", default_value = "5m", value_parser = ca_overlap)]
    pub ca_overlap: Duration,

    /// Look at the Secrets and the caBundles at least this often (1s to 24h), and sooner when a
    /// renewal falls due.
    #[arg(long, env = "INFLIGHT_CERT_CHECK_INTERVAL", default_value = "1h", value_parser = check_interval)]
    pub cert_check_interval: Duration,
}

impl CertFlags {
    /// The lifetimes, once the flags agree with each other: a certificate renewed as soon as it is
    /// made would be made again on every pass.
    pub fn policy(&self) -> Result<Policy, String> {
        let renew_before = self.renew_before.unwrap_or(self.cert_validity / 3);
        let ca_renew_before = self.ca_renew_before.unwrap_or(self.ca_validity / 3);
        if renew_before >= self.cert_validity {
            return Err(format!(
                "--renew-before ({}) must be less than --cert-validity ({})",
                show(renew_before),
                show(self.cert_validity)
            ));
        }
        if ca_renew_before >= self.ca_validity {
            return Err(format!(
                "--ca-renew-before ({}) must be less than --ca-validity ({})",
                show(ca_renew_before),
                show(self.ca_validity)
            ));
        }
        // A serving certificate never outlives its CA; one made late in the CA's life would be
        // due at once if its renewal window were longer than the CA's.
        if renew_before >= ca_renew_before {
            return Err(format!(
                "--renew-before ({}) must be less than --ca-renew-before ({})",
                show(renew_before),
                show(ca_renew_before)
            ));
        }
        let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Ok(Policy {
            cert_validity: secs(self.cert_validity),
            renew_before: secs(renew_before),
            ca_validity: secs(self.ca_validity),
            ca_renew_before: secs(ca_renew_before),
            ca_overlap: secs(self.ca_overlap),
        })
    }

    /// Refuses flags that disagree with each other (call it at start, after parsing).
    pub fn check(&self) -> Result<(), String> {
        self.policy().map(drop)
    }
}

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

fn bounded(text: &str, min: u64, max: u64) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if d < Duration::from_secs(min) || d > Duration::from_secs(max) {
        return Err(format!(
            "{text:?}: must be between {} and {}",
            show(Duration::from_secs(min)),
            show(Duration::from_secs(max))
        ));
    }
    Ok(d)
}

fn cert_validity(text: &str) -> Result<Duration, String> {
    bounded(text, MINUTE, 3650 * DAY)
}
fn ca_validity(text: &str) -> Result<Duration, String> {
    bounded(text, MINUTE, 10_950 * DAY)
}
fn renew_before(text: &str) -> Result<Duration, String> {
    bounded(text, 1, 10_950 * DAY)
}
fn ca_overlap(text: &str) -> Result<Duration, String> {
    bounded(text, 0, DAY)
}
fn check_interval(text: &str) -> Result<Duration, String> {
    bounded(text, 1, DAY)
}

/// A DNS label (RFC 1123): what a Service is named.
fn dns_label(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a DNS label"))
    }
}

/// A DNS subdomain, or nothing.
fn optional_subdomain(text: &str) -> Result<String, String> {
    if text.is_empty() {
        Ok(String::new())
    } else {
        dns_subdomain(text)
    }
}

/// A DNS subdomain (RFC 1123): what a Secret, a MutatingWebhookConfiguration and an APIService
/// are named.
fn dns_subdomain(text: &str) -> Result<String, String> {
    if text.len() <= 253 && text.split('.').all(|l| dns_label(l).is_ok()) {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a DNS subdomain"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        certs: CertFlags,
    }

    fn parse(args: &[&str]) -> Result<CertFlags, String> {
        Cli::try_parse_from(std::iter::once("operator").chain(args.iter().copied()))
            .map(|c| c.certs)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_renew_a_third_of_the_way_before_expiry() {
        let f = parse(&[]).unwrap();
        assert!(f.tls_bootstrap);
        assert_eq!(f.ca_secret, "inflight-ca");
        assert_eq!(f.injector_secret, "inflight-injector-tls");
        assert_eq!(f.webhook_configuration, "inflight-injector");
        assert_eq!(f.apiservice, "v1alpha1.metrics.smi-spec.io");
        assert_eq!(
            (
                f.keda_namespace.as_str(),
                f.keda_client_secret.as_str(),
                f.trigger_authentication.as_str()
            ),
            ("keda", "inflight-keda", "inflight-keda")
        );
        let none = parse(&["--apiservice", "", "--webhook-configuration", ""]).unwrap();
        assert_eq!(
            (none.apiservice, none.webhook_configuration),
            (String::new(), String::new())
        );
        let p = f.policy().unwrap();
        assert_eq!(p.cert_validity, 90 * 86_400);
        assert_eq!(p.renew_before, 30 * 86_400);
        assert_eq!(p.ca_validity, 1825 * 86_400);
        assert_eq!(p.ca_renew_before, p.ca_validity / 3);
        assert_eq!(p.ca_overlap, 300);
        assert_eq!(f.cert_check_interval, Duration::from_secs(3600));
        assert!(!parse(&["--tls-bootstrap", "false"]).unwrap().tls_bootstrap);
    }

    #[test]
    fn out_of_bounds_and_malformed_flags_are_refused_with_the_value() {
        for (flag, value) in [
            ("--cert-validity", "10s"),
            ("--cert-validity", "4000d"),
            ("--cert-check-interval", "0s"),
            ("--cert-check-interval", "2d"),
            ("--ca-overlap", "2d"),
            ("--injector-service", "Not_A_Label"),
            ("--apiservice", "v1alpha1..x"),
            ("--tls-bootstrap", "maybe"),
        ] {
            let e = parse(&[flag, value]).unwrap_err();
            assert!(e.contains(value), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn renewal_windows_that_would_renew_at_once_are_refused() {
        for args in [
            &["--cert-validity", "1h", "--renew-before", "1h"][..],
            &["--ca-validity", "10d", "--ca-renew-before", "11d"],
            &["--renew-before", "89d", "--ca-renew-before", "60d"],
        ] {
            let e = parse(args).unwrap().check().unwrap_err();
            assert!(e.contains("must be less than"), "{args:?}: {e}");
        }
        parse(&["--cert-validity", "2m", "--renew-before", "119s"])
            .unwrap()
            .check()
            .unwrap();
    }
}
