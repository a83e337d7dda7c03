//! Generates the Rust code for our `.proto` files with `protox`, a pure-Rust
//! protobuf compiler, so a fresh machine needs no system `protoc`.

use std::error::Error;

const PROTOS: &[&str] = &[
    "externalscaler.proto",
    "inflight/v1/ingest.proto",
    "inflight/demo/v1/demo.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
