//! Whether the cluster has native sidecars (init containers with `restartPolicy: Always`, on by
//! default since Kubernetes 1.29).

use std::time::Duration;

use crate::config::NativeSidecar;

/// The first Kubernetes minor version (of 1.x) with native sidecars on by default.
const NATIVE_SINCE: u32 = 29;

/// Decides once, at start. `auto` asks the API server; when it cannot be asked, the proxy is
/// added as a regular container, which works on every version (an init container with
/// `restartPolicy: Always` on a cluster without the feature would never finish, and the pod
/// would never start).
pub async fn native_sidecar(choice: NativeSidecar) -> bool {
    match choice {
        NativeSidecar::Always => true,
        NativeSidecar::Never => false,
        NativeSidecar::Auto => {
            for attempt in 1..=5 {
                match server_minor().await {
                    Ok(minor) => {
                        tracing::info!(
                            minor,
                            native = minor >= NATIVE_SINCE,
                            "Kubernetes 1.{minor}"
                        );
                        return minor >= NATIVE_SINCE;
                    }
                    Err(error) => {
                        tracing::warn!(%error, attempt, "cannot read the Kubernetes version");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            tracing::warn!("Kubernetes version unknown: the proxy is added as a regular container (set --native-sidecar always to override)");
            false
        }
    }
}

async fn server_minor() -> Result<u32, String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| e.to_string())?;
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| e.to_string())?;
    minor_of(&info.major, &info.minor)
}

/// The minor version of `1.<minor>`; providers write minors such as `34+`.
pub fn minor_of(major: &str, minor: &str) -> Result<u32, String> {
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    match (digits(major), digits(minor)) {
        (Some(1), Some(m)) => Ok(m),
        (Some(major), Some(_)) if major > 1 => Ok(u32::MAX),
        _ => Err(format!("unreadable version {major:?}.{minor:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_versions_as_providers_write_them() {
        assert_eq!(minor_of("1", "34"), Ok(34));
        assert_eq!(minor_of("1", "28+"), Ok(28));
        assert!(minor_of("", "").is_err());
        assert_eq!(minor_of("2", "0"), Ok(u32::MAX));
    }
}
