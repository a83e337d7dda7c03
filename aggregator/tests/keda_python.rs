//! KEDA's side of the external scaler protocol, played by Python grpcio (stubs compiled by
//! grpcio-tools from our `proto/externalscaler.proto`), against the real aggregator binary fed by
//! the real inflight-proxy in front of the demo app. See `keda_client.py` for every expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{proxy_in_front_of_demo_app, Aggregator};

fn python_has_grpc() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn python_keda_client_drives_all_four_rpcs() {
    if let Err(e) = python_has_grpc() {
        panic!("this test needs Python with grpcio and grpcio-tools (scripts/test.sh installs them: pip install grpcio grpcio-tools): {e}");
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stubs = std::env::temp_dir().join(format!("inflight-keda-stubs-{}", std::process::id()));
    std::fs::create_dir_all(&stubs).unwrap();
    let protos = manifest.join("../proto/proto");
    let status = Command::new("python3")
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", protos.display()))
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg(protos.join("externalscaler.proto"))
        .status()
        .unwrap();
    assert!(status.success(), "grpc_tools.protoc failed");

    let aggregator = Aggregator::start(&["--warm-up", "1s"]);
    let proxy = proxy_in_front_of_demo_app(&aggregator.url(), "deployment/web", "web-1");

    let out = Command::new("python3")
        .arg(manifest.join("tests/keda_client.py"))
        .env("AGGREGATOR", aggregator.scaler.to_string())
        .env("PROXY", proxy.to_string())
        .env("STUBS", &stubs)
        .env("STREAMS", "50")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&stubs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "keda_client.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["invalid_argument_checks"], 36, "{result}");
    println!("python KEDA client: {result}");
}
