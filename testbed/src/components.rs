//! The third-party parts of the cluster, built from Go modules by `scripts/build-components.sh` and
//! cached by version under `$INFLIGHT_CACHE/testbed/`: Kubernetes, etcd, CoreDNS, KEDA, pause; for
//! beds that enforce NetworkPolicies, kube-router; Helm, for the chart; and cert-manager's CRDs, for
//! the chart's cert-manager mode.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::layout::cache_dir;
use crate::Error;

const VERSIONS: &str = include_str!("../versions.env");
const BUILD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-components.sh");

/// A version from `versions.env`.
pub fn version(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map_or("unknown", |(_, v)| v.trim())
}

/// The components, their version key and the binaries each provides.
const COMPONENTS: &[(&str, &str)] = &[
    ("kubernetes", "KUBERNETES_VERSION"),
    ("etcd", "ETCD_VERSION"),
    ("coredns", "COREDNS_VERSION"),
    ("keda", "KEDA_VERSION"),
    ("pause", "KUBERNETES_VERSION"),
    (KUBE_ROUTER, "KUBE_ROUTER_VERSION"),
    (HELM, "HELM_VERSION"),
    (CERT_MANAGER, "CERT_MANAGER_VERSION"),
];

/// The NetworkPolicy engine: built (once) only for a bed that enforces policies
/// (`UpOptions::network_policy`), or by `inflight-testbed build`.
pub const KUBE_ROUTER: &str = "kube-router";

/// Helm: built by `inflight-testbed build` (as `scripts/test.sh` does), for the tests of the chart.
pub const HELM: &str = "helm";

/// cert-manager's CRDs (`deploy/crds` of its module): fetched by `inflight-testbed build`, for the
/// chart's tests. Its controllers are not built: the module proxy does not serve their modules.
pub const CERT_MANAGER: &str = "cert-manager";

/// What every bed needs.
fn required(component: &str) -> bool {
    component != KUBE_ROUTER && component != HELM && component != CERT_MANAGER
}

fn component_dir(component: &str) -> PathBuf {
    let key = COMPONENTS
        .iter()
        .find(|(c, _)| *c == component)
        .map_or("", |(_, k)| k);
    cache_dir()
        .join("testbed")
        .join(format!("{component}-{}", version(key)))
}

/// Path of a built binary, e.g. `bin("kubernetes", "kube-apiserver")`.
pub fn bin(component: &str, binary: &str) -> PathBuf {
    component_dir(component).join("bin").join(binary)
}

/// KEDA's kustomize configuration (`config/` of its module: CRDs, RBAC, Deployments, APIService).
pub fn keda_config() -> PathBuf {
    component_dir("keda").join("config")
}

/// cert-manager's CRDs, one file each.
pub fn cert_manager_crds() -> PathBuf {
    component_dir(CERT_MANAGER).join("crds")
}

pub fn kubectl() -> PathBuf {
    bin("kubernetes", "kubectl")
}

pub fn helm() -> PathBuf {
    bin(HELM, "helm")
}

/// Components not built yet.
pub fn missing() -> Vec<&'static str> {
    COMPONENTS
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| !component_dir(c).join(".done").exists())
        .collect()
}

/// Builds whatever a bed needs and is missing (all of it on a fresh machine: tens of minutes;
/// progress goes to stderr), kube-router too when `network_policy`. Returns at once when it is all
/// cached.
pub fn ensure_built(network_policy: bool) -> Result<(), Error> {
    let missing: Vec<_> = missing()
        .into_iter()
        .filter(|c| required(c) || network_policy)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = vec!["packages"];
    args.extend(missing);
    run_build(&args)
}

/// Runs the build script for the named steps (`packages`, a component, or nothing for all).
pub fn run_build(steps: &[&str]) -> Result<(), Error> {
    let script = Path::new(BUILD_SCRIPT);
    let status = Command::new("bash")
        .arg(script)
        .args(steps)
        .env("INFLIGHT_CACHE", cache_dir())
        .status()
        .map_err(|e| Error::Spawn {
            what: script.display().to_string(),
            source: e,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("{} {}", script.display(), steps.join(" ")),
            status: status.to_string(),
            output: "see the lines above".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read() {
        assert!(version("KUBERNETES_VERSION").starts_with("v1.34."));
        assert!(version("KEDA_VERSION").starts_with("v2."));
        assert_eq!(version("KUBE_ROUTER_VERSION"), "v2.1.0");
        assert!(version("HELM_VERSION").starts_with("v4."));
        assert_eq!(version("NOPE"), "unknown");
    }
}
