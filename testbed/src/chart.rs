//! The Helm chart on the bed. Whole, installed with Helm ([`install`]), as a user installs it: the
//! end-to-end tests and the demo. In parts, for the tests of one component: its RBAC applied for
//! the test's namespace, so that the component runs with exactly the rights the chart gives it,
//! each binding renamed `<name>-<namespace>` so that tests side by side each bind their own
//! ServiceAccount; and the NetworkPolicies. Both are rendered by Helm ([`render`]).

use std::path::{Path, PathBuf};

use crate::{Error, TestBed};

/// `charts/inflight/templates/<file>` of this checkout.
pub fn template(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/inflight/templates")
        .join(file)
}

/// The template `file` as Helm renders it for a release in namespace `ns` with the chart's default
/// values (Helm is built by `inflight-testbed build`).
pub fn render(file: &str, ns: &str) -> Result<String, Error> {
    let show = format!("templates/{file}");
    helm(&[
        "template",
        "inflight",
        "--namespace",
        ns,
        "--show-only",
        &show,
    ])
}

/// The chart's directory in this checkout.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/inflight")
}

/// Helm (built by `inflight-testbed build`) with `args`, on the chart of this checkout: its
/// standard output.
pub fn helm(args: &[&str]) -> Result<String, Error> {
    helm_with(args, &[dir().display().to_string()], None)
}

/// Helm with `args`, then `after`, talking to the cluster of `kubeconfig` if any.
fn helm_with(args: &[&str], after: &[String], kubeconfig: Option<&Path>) -> Result<String, Error> {
    let helm = crate::components::helm();
    let mut command = std::process::Command::new(&helm);
    command.args(args).args(after);
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    let out = command.output().map_err(|e| Error::Spawn {
        what: helm.display().to_string(),
        source: e,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("helm {}", args.join(" ")),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The release the end-to-end tests and the demo install: one per cluster, since the CRD, the
/// webhook configuration and the SMI APIService are the cluster's.
pub const RELEASE: &str = "inflight";
/// Its namespace.
pub const RELEASE_NAMESPACE: &str = "inflight";

/// `helm upgrade --install` of the chart of this checkout as [`RELEASE`] in [`RELEASE_NAMESPACE`],
/// with the bed's images (built here, never pulled) and `values` (`key=value`, each a `--set`),
/// waiting until every Deployment is ready. Objects of the same names that tests applied
/// without Helm (RBAC, the APIService) are taken over.
pub fn install(tb: &TestBed, values: &[&str]) -> Result<String, Error> {
    let mut args = vec![
        "upgrade",
        "--install",
        RELEASE,
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--set",
        "image.tag=dev",
        "--set",
        "image.pullPolicy=Never",
        "--take-ownership",
        "--wait",
        "--timeout",
        "5m",
    ];
    for value in values {
        args.extend(["--set", value]);
    }
    // `helm upgrade --install RELEASE CHART`: the chart comes last.
    helm_with(
        &args,
        &[dir().display().to_string()],
        Some(&tb.kubeconfig()),
    )
}

/// `helm uninstall` of [`RELEASE`], waiting until what it deletes is gone.
pub fn uninstall(tb: &TestBed) -> Result<String, Error> {
    helm_with(
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            RELEASE_NAMESPACE,
            "--wait",
            "--timeout",
            "5m",
        ],
        &[],
        Some(&tb.kubeconfig()),
    )
}

/// Installs the chart's CRD (`crds/`, which an `api` test keeps equal to the code's) as Helm
/// would, and waits until the API server serves it. Idempotent, and safe for tests side by side
/// to call at once: a server-side apply creates or updates in one call, where a client-side
/// apply of a CRD that is missing (`helm uninstall` deletes it) races another's create and fails
/// with AlreadyExists.
pub fn install_crd(layout: &crate::Layout) -> Result<(), Error> {
    apply_crds(
        layout,
        &dir().join("crds/httpautoscalers.inflight.dev.yaml"),
        &["crd/httpautoscalers.inflight.dev"],
    )
}

/// cert-manager's CRDs (from its module, `inflight-testbed build`), installed like
/// [`install_crd`]: what the chart's `tls.mode=certManager` writes can then be checked against
/// cert-manager's schemas. Nothing of cert-manager runs.
pub fn install_cert_manager_crds(layout: &crate::Layout) -> Result<(), Error> {
    apply_crds(
        layout,
        &crate::components::cert_manager_crds(),
        &[
            "crd/certificates.cert-manager.io",
            "crd/clusterissuers.cert-manager.io",
        ],
    )
}

/// Server-side applies the CRDs of `path` (a file or a directory), then waits until each of
/// `established` is served.
fn apply_crds(layout: &crate::Layout, path: &Path, established: &[&str]) -> Result<(), Error> {
    crate::api::kubectl_run(
        layout,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=inflight-tests",
            "-f",
            &path.display().to_string(),
        ],
    )?;
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    wait.extend_from_slice(established);
    crate::api::kubectl_run(layout, &wait).map(drop)
}

/// Applies the chart's NetworkPolicies (`networkpolicies.yaml`) in the test's namespace, as a
/// release there would have them.
pub fn apply_network_policies(tb: &TestBed) -> Result<(), Error> {
    let ns = tb.namespace();
    let text = render("networkpolicies.yaml", ns)?;
    let path = std::env::temp_dir().join(format!("inflight-{ns}-networkpolicies.yaml"));
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    let applied =
        crate::api::kubectl_run(tb.layout(), &["apply", "-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    applied.map(drop)
}

/// The template `file` rendered for namespace `ns`: bindings renamed `<name>-<ns>`, and so are
/// KEDA's client Secret and ClusterTriggerAuthentication (`inflight-keda`), which tests side by
/// side each have, and with them the roles that name them or live in another namespace (KEDA's),
/// and the references to those roles.
pub fn render_rbac(file: &str, ns: &str) -> Result<String, Error> {
    let keda = format!("\"inflight-keda-{ns}\"");
    let text = render(file, ns)?.replace("\"inflight-keda\"", &keda);
    let home = format!("\n  namespace: {ns}\n");
    let kind = |doc: &str| {
        doc.lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .unwrap_or_default()
            .to_owned()
    };
    let field = |doc: &str, at: &str| {
        doc.split_once(at)
            .and_then(|(_, rest)| rest.lines().next())
            .unwrap_or_default()
            .to_owned()
    };
    // Which role an object is, or a binding refers to: a Role is known by its namespace too.
    let id = |doc: &str, kind: &str, name: &str| {
        let namespace = if kind == "Role" {
            field(doc, "\n  namespace: ")
        } else {
            String::new()
        };
        format!("{kind}/{namespace}/{name}")
    };
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let own: Vec<String> = docs
        .iter()
        .filter(|d| {
            let k = kind(d);
            (k == "Role" && d.contains("\n  namespace: ") && !d.contains(&home))
                || (k.ends_with("Role") && d.contains(&keda))
        })
        .map(|d| id(d, &kind(d), &field(d, "\nmetadata:\n  name: ")))
        .collect();
    let docs: Vec<String> = docs
        .iter()
        .map(|doc| {
            let kind = kind(doc);
            let name = field(doc, "\nmetadata:\n  name: ");
            let mut doc = (*doc).to_owned();
            if let Some((ref_kind, ref_name)) = role_ref(&doc) {
                if own.contains(&id(&doc, &ref_kind, &ref_name)) {
                    let from = format!("\n  kind: {ref_kind}\n  name: {ref_name}\n");
                    let to = format!("\n  kind: {ref_kind}\n  name: {ref_name}-{ns}\n");
                    doc = doc.replace(&from, &to);
                }
            }
            let renamed = kind.ends_with("Binding") || own.contains(&id(&doc, &kind, &name));
            let Some(at) = doc.find("\nmetadata:\n  name: ").filter(|_| renamed) else {
                return doc;
            };
            let start = at + "\nmetadata:\n  name: ".len();
            let end = doc[start..].find('\n').map_or(doc.len(), |e| start + e);
            format!("{}-{ns}{}", &doc[..end], &doc[end..])
        })
        .collect();
    Ok(docs.join("\n---\n"))
}

/// The kind and name of a binding's `roleRef`.
fn role_ref(doc: &str) -> Option<(String, String)> {
    let (_, block) = doc.split_once("\nroleRef:\n")?;
    let value = |key: &str| {
        block
            .lines()
            .take_while(|l| l.starts_with("  "))
            .find_map(|l| l.trim().strip_prefix(key).map(str::to_owned))
    };
    Some((value("kind: ")?, value("name: ")?))
}

/// The operator's flags for a test in namespace `ns`, beside [`render_rbac`]'s names: its TLS
/// bootstrap makes the aggregator's certificate and KEDA's client certificate (Secret and
/// ClusterTriggerAuthentication `inflight-keda-<ns>`), and leaves the cluster's webhook and
/// APIService, which other tests use, alone. KEDA dials the scaler at its Service's name, which
/// the certificate is for; an operator on this host must be told where to dial it
/// (`--aggregator-dial`, the Service's ClusterIP:9091).
pub fn operator_args(ns: &str) -> Vec<String> {
    let keda = format!("inflight-keda-{ns}");
    [
        "--webhook-configuration",
        "",
        "--apiservice",
        "",
        "--keda-client-secret",
        &keda,
        "--trigger-authentication",
        &keda,
        "--aggregator-address",
        &format!("inflight-aggregator.{ns}.svc:9091"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Applies the rendered `file` for the test's namespace.
pub fn apply_rbac(tb: &TestBed, file: &str) -> Result<(), Error> {
    let ns = tb.namespace();
    let text = render_rbac(file, ns)?;
    let path = std::env::temp_dir().join(format!("inflight-{ns}-{file}"));
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    // No `-n`: each namespaced object names its namespace (a binding may live in kube-system).
    let applied =
        crate::api::kubectl_run(tb.layout(), &["apply", "-f", &path.display().to_string()]);
    let _ = std::fs::remove_file(&path);
    applied.map(drop)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    #[ignore = "needs Helm, built with the test bed's components (scripts/test.sh: inflight-testbed build)"]
    fn the_network_policies_render_with_the_default_values() {
        let text = render("networkpolicies.yaml", "t-1").unwrap();
        assert!(text.contains("namespace: t-1\n"));
        assert!(text.contains("kubernetes.io/metadata.name: keda\n"));
        assert!(text.contains("cidr: 0.0.0.0/32\n"));
        assert!(!text.contains("{{"));
    }

    #[test]
    #[ignore = "needs Helm, built with the test bed's components (scripts/test.sh: inflight-testbed build)"]
    fn the_aggregators_rbac_renders_with_each_binding_renamed_for_the_namespace() {
        let text = render_rbac("aggregator-rbac.yaml", "t-1").unwrap();
        assert!(
            text.contains("kind: ClusterRoleBinding\nmetadata:\n  name: inflight-aggregator-t-1\n")
        );
        assert!(text.contains("kind: RoleBinding\nmetadata:\n  name: inflight-aggregator-t-1\n  namespace: kube-system"));
        assert!(text.contains("kind: ClusterRole\nmetadata:\n  name: inflight-aggregator\n"));
        assert!(text.contains("namespace: t-1"));
        assert!(!text.contains("{{"));
    }

    #[test]
    #[ignore = "needs Helm, built with the test bed's components (scripts/test.sh: inflight-testbed build)"]
    fn the_operators_rights_in_kedas_namespace_are_the_tests_own() {
        let text = render_rbac("operator-rbac.yaml", "t-1").unwrap();
        assert!(text
            .contains("kind: Role\nmetadata:\n  name: inflight-operator-t-1\n  namespace: keda\n"));
        assert!(
            text.contains("kind: Role\nmetadata:\n  name: inflight-operator\n  namespace: t-1\n")
        );
        assert!(text.contains("  kind: Role\n  name: inflight-operator-t-1\n"));
        assert!(text.contains("resourceNames: [\"inflight-keda-t-1\"]"));
        assert!(!text.contains("\"inflight-keda\""));
        // The cluster-wide rules that name the test's ClusterTriggerAuthentication are its own,
        // and so is their binding's reference; the operator's other rules are shared.
        assert!(text.contains("kind: ClusterRole\nmetadata:\n  name: inflight-operator-keda-t-1\n"));
        assert!(text.contains("  kind: ClusterRole\n  name: inflight-operator-keda-t-1\n"));
        assert!(text.contains("kind: ClusterRole\nmetadata:\n  name: inflight-operator\n"));
        assert!(text.contains("  kind: ClusterRole\n  name: inflight-operator\n"));
    }
}
