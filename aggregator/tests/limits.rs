//! The gRPC server's limits, against the real aggregator binary: the streams of a peer that stops
//! answering are reaped by HTTP/2 keepalive, connections advertise the stream cap and keep TCP
//! alive, `StreamIsActive` streams are capped and push only changes, and callers naming workloads
//! nobody reports for leave nothing behind once they go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{proxy_in_front_of_demo_app, Aggregator};
use inflight_proto::externalscaler::external_scaler_client::ExternalScalerClient;
use inflight_proto::externalscaler::{GetMetricsRequest, ScaledObjectRef};
use inflight_proto::v1::ingest_client::IngestClient;
use inflight_proto::v1::{
    report_request, Interval, PodIdentity, PodReport, ReportRequest, WorkloadRef,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;

/// Generous: the machine is a loaded 2-core box.
const DEADLINE: Duration = Duration::from_secs(60);

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reference(workload: &str, scale_to_zero_after: &str) -> ScaledObjectRef {
    ScaledObjectRef {
        name: workload.into(),
        namespace: "shop".into(),
        scaler_metadata: HashMap::from([
            ("workload".to_owned(), format!("deployment/{workload}")),
            ("target".to_owned(), "10".to_owned()),
            (
                "scaleToZeroAfter".to_owned(),
                scale_to_zero_after.to_owned(),
            ),
        ]),
    }
}

fn report(pod: &str, workload: &str) -> ReportRequest {
    let end = inflight_aggregator::now_ms();
    ReportRequest {
        report: Some(report_request::Report::Pod(PodReport {
            pod: Some(PodIdentity {
                namespace: "shop".into(),
                pod: pod.into(),
                workload: Some(WorkloadRef {
                    namespace: "shop".into(),
                    kind: "deployment".into(),
                    name: workload.into(),
                }),
                pod_ip: String::new(),
            }),
            interval: Some(Interval {
                start_unix_ms: end - 1000,
                length_ms: 1000,
            }),
            avg_concurrency: 1.0,
            in_flight: 1,
            requests: 1,
            responses: None,
            latency: None,
        })),
    }
}

/// A TCP relay to `upstream` for one connection, which stops forwarding (and answering) anything
/// in either direction once `frozen` turns true, keeping both sockets open: a peer whose host
/// vanished, as the aggregator sees it.
async fn freezable_relay(upstream: SocketAddr, frozen: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let (f1, f2) = (frozen.clone(), frozen);
        let a = tokio::spawn(pipe(cr, sw, f1));
        let b = tokio::spawn(pipe(sr, cw, f2));
        let _ = tokio::join!(a, b);
    });
    addr
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => n.unwrap_or(0),
            _ = frozen.wait_for(|f| *f) => break,
        };
        if n == 0 || *frozen.borrow() {
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    if *frozen.borrow() {
        // Hold both halves open, never reading again.
        let _held = (from, to);
        std::future::pending::<()>().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_a_peer_that_stopped_answering_are_reaped() {
    let aggregator = Aggregator::start(&["--grpc-keepalive", "1s"]);
    let (freeze, frozen) = watch::channel(false);
    let channel = async |to: SocketAddr| {
        let relay = freezable_relay(to, frozen.clone()).await;
        tonic::transport::Endpoint::from_shared(format!("http://{relay}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };

    // A report stream and a push stream, each over a relay.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(report("web-1", "web")).await.unwrap();
    let mut ingest = IngestClient::new(channel(aggregator.grpc).await);
    let _report = tokio::spawn(async move { ingest.report(ReceiverStream::new(rx)).await });
    let mut scaler = ExternalScalerClient::new(channel(aggregator.scaler).await);
    let mut push = scaler
        .stream_is_active(reference("web", "300s"))
        .await
        .unwrap()
        .into_inner();
    assert!(push.message().await.unwrap().is_some());
    eventually("one report stream and one push stream", async || {
        aggregator
            .metric("inflight_aggregator_report_streams")
            .await
            == Some(1.0)
            && aggregator.metric("inflight_aggregator_push_streams").await == Some(1.0)
    })
    .await;

    freeze.send_replace(true);
    eventually("both streams reaped", async || {
        aggregator
            .metric("inflight_aggregator_report_streams")
            .await
            == Some(0.0)
            && aggregator.metric("inflight_aggregator_push_streams").await == Some(0.0)
            && aggregator.metric("inflight_aggregator_push_watched").await == Some(0.0)
    })
    .await;
    drop(tx);
}

/// The state column (`tr`) of the aggregator's end of the connection from `client`, in
/// `/proc/net/tcp`: 2 while a keepalive timer runs.
fn timer_of_accepted(server: SocketAddr, client: SocketAddr) -> Option<u32> {
    let hex = |a: SocketAddr| {
        let SocketAddr::V4(v4) = a else {
            panic!("IPv4 only")
        };
        format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        )
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
            .then(|| f.get(5)?.split(':').next()?.parse().ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_advertise_the_stream_cap_and_keep_tcp_alive() {
    let aggregator = Aggregator::start(&[
        "--grpc-max-concurrent-streams",
        "7",
        "--grpc-tcp-keepalive",
        "5s",
    ]);
    let tcp = TcpStream::connect(aggregator.grpc).await.unwrap();
    let client = tcp.local_addr().unwrap();
    let (_h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let mut connection = Box::pin(connection);
    // SETTINGS arrive with the server's first frames; drive the connection until they have.
    eventually("the server's SETTINGS", async || {
        let _ = tokio::time::timeout(Duration::from_millis(50), connection.as_mut()).await;
        connection.max_concurrent_send_streams() == 7
    })
    .await;
    tokio::spawn(connection);
    eventually("a keepalive timer on the aggregator's socket", async || {
        timer_of_accepted(aggregator.grpc, client) == Some(2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_streams_are_capped_and_unknown_workloads_leave_no_trace() {
    let aggregator = Aggregator::start(&["--max-push-streams", "5"]);
    let mut scaler = ExternalScalerClient::connect(aggregator.scaler_url())
        .await
        .unwrap();
    let mut open = Vec::new();
    for i in 0..5 {
        let mut s = scaler
            .stream_is_active(reference(&format!("invented-{i}"), "300s"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.message().await.unwrap().map(|m| m.result), Some(false));
        open.push(s);
    }
    let refused = scaler
        .stream_is_active(reference("invented-5", "300s"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused}");
    assert!(
        refused.message().contains("--max-push-streams"),
        "{refused}"
    );
    // GetMetrics and IsActive naming workloads nobody reports for make no entry at all.
    for i in 0..500 {
        let r = reference(&format!("asked-{i}"), "300s");
        scaler.is_active(r.clone()).await.unwrap();
        let _ = scaler
            .get_metrics(GetMetricsRequest {
                scaled_object_ref: Some(r),
                metric_name: "m".into(),
            })
            .await;
    }
    assert_eq!(
        aggregator.metric("inflight_aggregator_push_streams").await,
        Some(5.0)
    );
    assert_eq!(
        aggregator
            .metric("inflight_aggregator_push_streams_refused_total")
            .await,
        Some(1.0)
    );
    let workloads = aggregator.metric("inflight_aggregator_workloads").await;
    assert!(
        workloads.is_some_and(|w| w <= 5.0),
        "at most the watched ones: {workloads:?}"
    );

    // Closing one frees its place; closing all leaves nothing watched, nothing in the registry.
    open.pop();
    eventually("a free place", async || {
        let mut scaler = scaler.clone();
        scaler
            .stream_is_active(reference("invented-5", "300s"))
            .await
            .is_ok()
    })
    .await;
    open.clear();
    eventually("nothing left behind", async || {
        aggregator.metric("inflight_aggregator_push_streams").await == Some(0.0)
            && aggregator.metric("inflight_aggregator_push_watched").await == Some(0.0)
            && aggregator.metric("inflight_aggregator_workloads").await == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_stream_says_only_what_changed() {
    let aggregator = Aggregator::start(&[]);
    let proxy = proxy_in_front_of_demo_app(&aggregator.url(), "deployment/web", "web-1");
    let mut scaler = ExternalScalerClient::connect(aggregator.scaler_url())
        .await
        .unwrap();
    let mut push = scaler
        .stream_is_active(reference("web", "1s"))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(DEADLINE, push.message())
            .await
            .expect("an answer")
            .unwrap()
            .expect("the stream is open")
            .result
    };
    // Whatever it says at first, the idle workload is soon inactive.
    while next().await {}

    // One request held for longer than the old 10 s repeat: the stream says `true` once, and
    // `false` once it is over (and idle for 1 s), with nothing in between.
    let request = tokio::spawn(async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(b"GET /sleep/12000 HTTP/1.0\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    });
    assert!(next().await, "true once the request is in flight");
    assert!(!next().await, "false next, not a repeated true");
    let answer = request.await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_follow_the_window_flags_and_stay_in_their_namespace() {
    let strict = Aggregator::start(&["--stable-window", "30s", "--burst-window", "10s"]);
    let open = Aggregator::start(&["--allow-cross-namespace"]);
    let with = |pairs: &[(&str, &str)]| {
        let mut r = reference("web", "300s");
        for (k, v) in pairs {
            r.scaler_metadata.insert((*k).to_owned(), (*v).to_owned());
        }
        r
    };
    let mut scaler = ExternalScalerClient::connect(strict.scaler_url())
        .await
        .unwrap();
    for (pairs, key) in [
        (&[("window", "8s")][..], "\"window\""),
        (&[("namespace", "payments")][..], "\"namespace\""),
    ] {
        let e = scaler.get_metric_spec(with(pairs)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(key), "{key} named in {e}");
    }
    scaler
        .get_metric_spec(with(&[("window", "10s"), ("namespace", "shop")]))
        .await
        .unwrap();
    let mut scaler = ExternalScalerClient::connect(open.scaler_url())
        .await
        .unwrap();
    let spec = scaler
        .get_metric_spec(with(&[("namespace", "payments")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        spec.metric_specs[0].metric_name,
        "inflight-payments-deployment-web"
    );
}
