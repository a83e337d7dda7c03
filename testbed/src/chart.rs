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

/// The template `file` rendered for namespace `ns` (the YAML documents, bindings renamed).
pub fn render_rbac(file: &str, ns: &str) -> Result<String, Error> {
    let path = template(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(&path, e))?
        .replace("{{ .Release.Namespace }}", ns);
    if text.contains("{{") {
        return Err(Error::Invalid(format!(
            "{}: a template value the tests cannot render",
            path.display()
        )));
    }
    let docs: Vec<String> = text
        .split("\n---\n")
        .map(|doc| {
            let binding = doc
                .lines()
                .any(|l| l.starts_with("kind: ") && l.ends_with("Binding"));
            let Some(at) = doc.find("\nmetadata:\n  name: ").filter(|_| binding) else {
                return doc.to_owned();
            };
            let start = at + "\nmetadata:\n  name: ".len();
            let end = doc[start..].find('\n').map_or(doc.len(), |e| start + e);
            format!("{}-{ns}{}", &doc[..end], &doc[end..])
        })
        .collect();
    Ok(docs.join("\n---\n"))
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
}
