//! KEDA in the bed, as pods of images built from its module, installed from the module's own
//! kustomize configuration with the changes `manifests/keda/kustomization.yaml` explains.

use std::fs;

use base64::Engine as _;
use kube::Client;

use crate::api::{apply, kubectl_run, render, wait_async, wait_deployment};
use crate::layout::{Layout, CLUSTER_DOMAIN};
use crate::{components, configs, images, pki, process, Error};

pub(crate) async fn install(layout: &Layout, client: &Client) -> Result<(), Error> {
    // Certificates first, so neither KEDA pod starts without them.
    let services = [
        "keda-operator",
        "keda-metrics-apiserver",
        "keda-admission-webhooks",
    ];
    let mut names = Vec::new();
    for s in services {
        names.push(s.to_owned());
        names.push(format!("{s}.keda"));
        names.push(format!("{s}.keda.svc"));
        names.push(format!("{s}.keda.svc.{CLUSTER_DOMAIN}"));
    }
    let (cert, key) = pki::serving_cert(layout, &names)?;
    let ca =
        fs::read_to_string(layout.pki().join("ca.crt")).map_err(|e| Error::io(&layout.pki(), e))?;
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "keda"}},
            {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
             "metadata": {"name": "kedaorg-certs", "namespace": "keda"},
             "stringData": {"ca.crt": ca, "tls.crt": cert, "tls.key": key}}
        ]
    });
    apply(layout, &secret.to_string(), "keda-certs.json")?;

    let overlay = layout.dir().join("keda");
    let kustomization = render(
        include_str!("../manifests/keda/kustomization.yaml"),
        &[
            ("KEDA_CONFIG", "keda-config".to_owned()),
            ("KEDA_IMAGE_NAME", images::KEDA_IMAGE_NAME.to_owned()),
            (
                "KEDA_IMAGE_TAG",
                components::version("KEDA_VERSION").to_owned(),
            ),
            (
                "CA_BUNDLE",
                base64::engine::general_purpose::STANDARD.encode(ca.as_bytes()),
            ),
        ],
    );
    configs::write(&overlay.join("kustomization.yaml"), &kustomization)?;
    // kustomize loads bases only from below the overlay: a copy of KEDA's config goes there.
    let copy = overlay.join("keda-config").display().to_string();
    process::run(
        "cp",
        &[
            "-r",
            &components::keda_config().display().to_string(),
            &copy,
        ],
    )?;
    let rendered = kubectl_run(
        layout,
        &[
            "kustomize",
            "--load-restrictor=LoadRestrictionsNone",
            &overlay.display().to_string(),
        ],
    )?;
    // Server-side apply: KEDA's CRDs are larger than the last-applied annotation allows.
    apply(layout, &rendered, "keda.yaml")?;
    wait_deployment(client, layout, "keda", "keda-operator", 180).await?;
    wait_deployment(client, layout, "keda", "keda-metrics-apiserver", 180).await?;
    let req = || http::Request::get("/apis/external.metrics.k8s.io/v1beta1").body(Vec::new());
    wait_async(
        "KEDA's external metrics API (v1beta1.external.metrics.k8s.io)",
        120,
        layout,
        "kube-apiserver",
        || {
            let client = client.clone();
            async move {
                let req = req().map_err(|e| Error::Invalid(e.to_string()))?;
                Ok(client.request_text(req).await.is_ok())
            }
        },
    )
    .await
}
