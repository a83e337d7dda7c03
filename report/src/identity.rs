//! Who a reporter is, as the sidecar and the activator both learn it: the pod's name and
//! namespace from the downward API, else where Kubernetes puts them in every pod; and the bounds
//! of a report interval the aggregator accepts.

use std::path::Path;
use std::time::Duration;

/// Where Kubernetes mounts the namespace of a pod's service account.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Reports are refused by the aggregator, or flood it, outside these bounds.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// The pod's name: the flag (POD_NAME), else the host name (a pod's host name is its name).
pub fn pod_name(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The pod's namespace: the flag (POD_NAMESPACE), else its service account's as read from
/// `service_account` ([`SERVICE_ACCOUNT_NAMESPACE`] in a pod).
pub fn namespace(flag: Option<&str>, service_account: &Path) -> Option<String> {
    flag.map(str::to_owned).or_else(|| {
        let text = std::fs::read_to_string(service_account).ok()?;
        parse_namespace(text.trim()).ok()
    })
}

/// A report interval flag, within the bounds.
pub fn parse_report_interval(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if !(MIN_REPORT_INTERVAL..=MAX_REPORT_INTERVAL).contains(&d) {
        return Err(format!(
            "{text:?}: must be from {} to {}",
            humantime::format_duration(MIN_REPORT_INTERVAL),
            humantime::format_duration(MAX_REPORT_INTERVAL)
        ));
    }
    Ok(d)
}

/// A namespace is a DNS-1123 label.
pub fn parse_namespace(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
        ))
    }
}
