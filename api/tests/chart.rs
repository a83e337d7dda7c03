//! The chart's CRD is the one the Rust type generates: a change to the type without regenerating
//! the chart's copy (`cargo run -q -p inflight-api > charts/inflight/crds/httpautoscalers.inflight.dev.yaml`)
//! fails here.
#![allow(clippy::unwrap_used)]

#[test]
fn the_charts_crd_is_generated_from_the_type() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/inflight/crds/httpautoscalers.inflight.dev.yaml");
    let chart = std::fs::read_to_string(&path).unwrap();
    assert!(
        chart == inflight_api::crd_text(),
        "{} differs from the HTTPAutoscaler type: run `cargo run -q -p inflight-api > {}`",
        path.display(),
        path.display()
    );
}
