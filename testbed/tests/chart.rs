//! The chart as Helm sees it: `helm lint --strict` passes with the default values and with every
//! option on; what `helm template` renders is accepted by the API server (a server-side dry run,
//! which validates each object against its schema); and each option renders what it promises.
//! Needs Helm, which `inflight-testbed build` makes (`scripts/test.sh` does), and the bed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use inflight_testbed::{api, chart, TestBed};

/// Every option of values.yaml away from its default.
const EVERYTHING: &[&str] = &[
    "--set",
    "tls.mode=certManager",
    "--set",
    "tls.certManager.issuerRef.name=selfsigned",
    "--set",
    "tls.certManager.issuerRef.kind=ClusterIssuer",
    "--set",
    "serviceMonitor.enabled=true",
    "--set",
    "grafanaDashboard.enabled=true",
    "--set",
    "otlp.endpoint=http://otel-collector.observability:4317",
    "--set",
    "log.format=json",
];

/// The kinds of a rendered stream, each once per object.
fn kinds(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect()
}

#[test]
#[ignore = "needs Helm, built with the test bed's components (scripts/test.sh: inflight-testbed build)"]
fn testbed_helm_lints_the_chart_with_every_option() {
    let lint = chart::helm(&["lint", "--strict"]).unwrap();
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let mut args = vec!["lint", "--strict"];
    args.extend_from_slice(EVERYTHING);
    let lint = chart::helm(&args).unwrap();
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
}

#[test]
#[ignore = "needs Helm, built with the test bed's components (scripts/test.sh: inflight-testbed build)"]
fn testbed_the_options_render_what_they_promise() {
    let defaults = chart::helm(&["template", "inflight", "-n", "inflight"]).unwrap();
    let kinds_default = kinds(&defaults);
    for (kind, count) in [
        ("Deployment", 4),
        ("PodDisruptionBudget", 4),
        ("MutatingWebhookConfiguration", 1),
        ("APIService", 1),
        ("NetworkPolicy", 4),
    ] {
        let n = kinds_default.iter().filter(|k| **k == kind).count();
        assert_eq!(n, count, "{kind} in the default render");
    }
    for absent in ["Certificate", "ServiceMonitor", "PodMonitor", "ConfigMap"] {
        assert!(!kinds_default.contains(&absent), "{absent} without asking");
    }
    // The operator makes the certificates itself by default, and never with cert-manager.
    assert!(defaults.contains("--tls-bootstrap=true"));
    assert!(!defaults.contains("OTEL_EXPORTER_OTLP_ENDPOINT"));

    let mut args = vec!["template", "inflight", "-n", "inflight"];
    args.extend_from_slice(EVERYTHING);
    let all = chart::helm(&args).unwrap();
    let kinds_all = kinds(&all);
    for present in [
        "Certificate",
        "ClusterTriggerAuthentication",
        "ServiceMonitor",
        "PodMonitor",
        "ConfigMap",
    ] {
        assert!(kinds_all.contains(&present), "{present} with every option");
    }
    assert!(all.contains("--tls-bootstrap=false"));
    assert!(all.contains("cert-manager.io/inject-ca-from: inflight/inflight-injector-tls"));
    assert!(all.contains("cert-manager.io/inject-ca-from: inflight/inflight-aggregator-tls"));
    assert!(all.contains("value: \"http://otel-collector.observability:4317\""));
    assert!(all.contains("value: \"json\""));

    // cert-manager without an issuer is refused with the reason.
    let e = chart::helm(&["template", "inflight", "--set", "tls.mode=certManager"]).unwrap_err();
    assert!(
        e.to_string().contains("tls.certManager.issuerRef.name"),
        "{e}"
    );
}

/// What `helm template` renders with `values` is accepted by the API server, every object: a
/// server-side dry run checks each against its kind's schema and admission, and stores nothing.
fn passes_a_server_side_dry_run(tb: &TestBed, values: &[&str]) {
    let mut args = vec!["template", "inflight", "-n", tb.namespace()];
    args.extend_from_slice(values);
    let text = chart::helm(&args).unwrap();
    let path = std::env::temp_dir().join(format!("inflight-{}-chart.yaml", tb.namespace()));
    std::fs::write(&path, &text).unwrap();
    // The CRD first, as Helm installs crds/ before the templates.
    chart::install_crd(tb.layout()).unwrap();
    // No `-n`: each namespaced object names its own (KEDA's Role is in KEDA's).
    let out = api::kubectl_run(
        tb.layout(),
        &[
            "apply",
            "--dry-run=server",
            "-f",
            &path.display().to_string(),
        ],
    );
    let _ = std::fs::remove_file(&path);
    let out = out.unwrap();
    let created = out
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert_eq!(created, kinds(&text).len(), "{out}");
}

#[tokio::test]
#[ignore = "needs the test bed"]
async fn testbed_what_helm_template_renders_passes_a_server_side_dry_run() {
    let tb = TestBed::shared().await.unwrap();
    passes_a_server_side_dry_run(&tb, &[]);
}

/// With every option on, cert-manager's mode included, against cert-manager's own CRDs (its
/// controllers cannot be built here: `testbed/versions.env`), and the Prometheus Operator's
/// ServiceMonitor and PodMonitor left out, as their CRDs are not on the bed.
#[tokio::test]
#[ignore = "needs the test bed"]
async fn testbed_the_cert_manager_mode_passes_a_server_side_dry_run_against_its_crds() {
    let tb = TestBed::shared().await.unwrap();
    chart::install_cert_manager_crds(tb.layout()).unwrap();
    let values: Vec<&str> = EVERYTHING
        .chunks(2)
        .filter(|set| !set[1].starts_with("serviceMonitor."))
        .flatten()
        .copied()
        .collect();
    assert!(values.contains(&"tls.mode=certManager"));
    passes_a_server_side_dry_run(&tb, &values);
}
