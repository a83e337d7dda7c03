//! The Helm chart's RBAC, applied for a test's namespace: the components then run on the bed with
//! exactly the rights the chart gives them. The chart's templates for RBAC use one value,
//! `{{ .Release.Namespace }}`, which becomes the test's namespace; each binding is renamed
//! `<name>-<namespace>`, so that tests side by side each bind their own ServiceAccount.

use std::path::PathBuf;

use crate::{Error, TestBed};

/// `charts/inflight/templates/<file>` of this checkout.
pub fn template(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/inflight/templates")
        .join(file)
}

/// The template `file` rendered for namespace `ns`: bindings renamed `<name>-<ns>`, and so are
/// Roles in another namespace (KEDA's) with the bindings to them, and KEDA's client Secret and
/// ClusterTriggerAuthentication (`inflight-keda`), which tests side by side each have.
pub fn render_rbac(file: &str, ns: &str) -> Result<String, Error> {
    let path = template(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(&path, e))?
        .replace("{{ .Release.Namespace }}", ns)
        .replace("\"inflight-keda\"", &format!("\"inflight-keda-{ns}\""));
    if text.contains("{{") {
        return Err(Error::Invalid(format!(
            "{}: a template value the tests cannot render",
            path.display()
        )));
    }
    let home = format!("\n  namespace: {ns}\n");
    let elsewhere = |doc: &str| doc.contains("\n  namespace: ") && !doc.contains(&home);
    let kind = |doc: &str| {
        doc.lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .unwrap_or_default()
            .to_owned()
    };
    let docs: Vec<String> = text
        .split("\n---\n")
        .map(|doc| {
            let kind = kind(doc);
            let renamed = kind.ends_with("Binding") || (kind == "Role" && elsewhere(doc));
            let mut doc = doc.to_owned();
            if kind == "RoleBinding" && elsewhere(&doc) {
                doc = doc.replace(
                    "\n  kind: Role\n  name: inflight-operator\n",
                    &format!("\n  kind: Role\n  name: inflight-operator-{ns}\n"),
                );
            }
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
    }
}
