//! The cold-start breakdown on the test bed (issue 12), run by `bench/cold-start.sh`: the first
//! request for a workload at zero, from the moment it is sent to its response, split into the
//! steps it waits for, so that inflight's own share stands beside what Kubernetes and KEDA take.
//! Nothing here asserts a number: it prints each activation and writes every figure as JSON.
//!
//! The scene is the activator's test bed tests' (`tests/bed/mod.rs`): the aggregator and two
//! activator replicas in the cluster, the injector and the operator in this process, real KEDA,
//! the injected demo Deployment `web` (its app answering at once, `--latency 0s`) behind an
//! HTTPAutoscaler with minReplicas 0, maxReplicas 1. For each activation, once `web` is at zero
//! with no pod left and its Service on the activators, one request goes from this host to the
//! Service's ClusterIP, and this process timestamps each step as it arrives: how, and what each
//! step is, in `inflight_testbed::cold_start`, which the installed system's benchmark
//! (`e2e/examples/installed.rs`) shares.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

// The scene's module re-exports what the bed tests use; this example uses less of it.
#[allow(unused_imports)]
#[path = "../tests/bed/mod.rs"]
mod bed;

use std::path::PathBuf;
use std::time::Instant;

use bed::Scene;
use clap::Parser;
use inflight_testbed::cold_start::{
    activate, inactive_stream, line, scaled_object_ref, scaler_client, summarise, Knobs, Request,
    Target,
};
use inflight_testbed::{eventually, TestBed};
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Activations to time.
    #[arg(long, default_value_t = 20)]
    n: usize,
    /// Where to write every figure, as JSON.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    knobs: Knobs,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let spec = json!({"maxReplicas": 1, "scaleToZeroAfter": args.knobs.scale_to_zero_after,
                      "pollingInterval": args.knobs.polling_interval});
    let scene =
        Scene::start_with_latency(TestBed::shared().await.unwrap(), spec.clone(), false, "0s")
            .await;
    let ns = scene.tb.namespace().to_owned();

    // The ScaledObjectRef KEDA sends: the operator's trigger metadata, the ScaledObject's name.
    let so = bed::get(&scene.tb, &["scaledobject/web"]).expect("the ScaledObject web");
    let object = scaled_object_ref(&so);
    // KEDA's side of the scaler: mutual TLS on 9091 with the client certificate the operator
    // made for KEDA (the Secret `keda/inflight-keda-<namespace>`, chart::operator_args).
    let grpc = format!("inflight-aggregator.{ns}.svc:9091");
    let mut keda = scaler_client(scene.tb.layout(), &format!("inflight-keda-{ns}"), &ns)
        .await
        .unwrap();
    let target = Target {
        client: scene.tb.client(),
        namespace: ns.clone(),
        deployment: "web".into(),
        selector: "app=web".into(),
        readyz_poll: args.knobs.readyz_poll,
    };
    let injectors = [scene.injector_admin];
    let request = Request {
        target: &target,
        addr: scene.web,
        host: &scene.host,
        marker: "on web-",
        injectors: &injectors,
    };
    println!(
        "cold_start: {} activations of web in {ns}; StreamIsActive from {grpc} with {:?}",
        args.n, object.scaler_metadata
    );

    let mut activations = Vec::new();
    let begun = Instant::now();
    for i in 1..=args.n {
        // At zero, on the activators, and nothing of the last pod left (its shutdown would
        // share the two cores with the next start).
        let cycle = Instant::now();
        scene.at_zero_on_the_activators(300).await;
        eventually("no pod of web left", 180, || async {
            let list = bed::get(&scene.tb, &["pods", "-l", "app=web"])?;
            list["items"].as_array()?.is_empty().then_some(())
        })
        .await;
        let waited = cycle.elapsed();
        tokio::time::sleep(args.knobs.settle).await;

        // The push stream, opened before the request; the aggregator says the state now first.
        let pushes = inactive_stream(&mut keda, &object).await.unwrap();
        let record = activate(&scene.tb, &request, i, Some(pushes), waited).await;
        println!("{}", line(&record, args.n));
        activations.push(record);
    }

    let mut result = summarise(&activations);
    let more = json!({
        "namespace": ns,
        "hta_spec": spec,
        "web_latency": "0s",
        "readyz_poll_ms": args.knobs.readyz_poll.as_secs_f64() * 1e3,
        "settle_s": args.knobs.settle.as_secs_f64(),
        "scaler_metadata": object.scaler_metadata,
        "seconds": begun.elapsed().as_secs_f64(),
        "activations": activations,
    });
    if let (Some(r), Some(more)) = (result.as_object_mut(), more.as_object()) {
        r.extend(more.clone());
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!(
        "cold_start: {} of {} activations answered 200 with X-Inflight-Cold-Start; ours {}, \
         Kubernetes+KEDA {}, total {}; figures in {}",
        result["ok"],
        args.n,
        result["ours"],
        result["kubernetes_and_keda"],
        result["total"],
        args.out.display()
    );
}
