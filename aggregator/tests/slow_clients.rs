//! Slow and idle clients of the SMI API (HTTPS), against the real aggregator binary: half-sent
//! request heads and silent connections are closed, an idle h2 connection is closed, and the
//! connection cap closes one more connection at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Generous: the machine is a loaded 2-core box.
const DEADLINE: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The aggregator binary with a serving certificate of our own, so clients can verify it.
struct Smi {
    child: Child,
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Smi {
    fn start(extra: &[&str]) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "inflight-slow-clients-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let local = |p: u16| format!("127.0.0.1:{p}");
        let child = Command::new(env!("CARGO_BIN_EXE_inflight-aggregator"))
            .args(["--grpc-listen", &local(free_port())])
            .args(["--ingest-auth", "none"])
            .args(["--admin-listen", &local(free_port())])
            .args(["--smi-listen", &addr.to_string()])
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .args(extra)
            .env_remove("KUBECONFIG")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < until,
                "the SMI API did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            addr,
            ca: cert.der().clone(),
            _dir: TempDir(dir),
        }
    }

    fn connector(&self, alpn: &[u8]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        TlsConnector::from(Arc::new(config))
    }

    async fn tls(&self, connector: &TlsConnector) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }
}

impl Drop for Smi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads until the server closes the connection (an error counts: a TLS peer that closes
/// without `close_notify`), or fails the test at the deadline.
async fn closed_by_server(mut stream: impl AsyncRead + Unpin) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server left the connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_half_sent_heads_and_silent_connections_are_closed() {
    let smi = Arc::new(Smi::start(&[
        "--smi-header-read-timeout",
        "5s",
        "--smi-idle-timeout",
        "1h",
        "--smi-max-connections",
        "1000",
    ]));
    let connector = smi.connector(b"http/1.1");
    // A few handshakes at a time, so that on a loaded machine none of them takes as long as the
    // server allows (the deadline covers the handshake too).
    let handshakes = Arc::new(tokio::sync::Semaphore::new(16));
    let mut clients = Vec::new();
    for _ in 0..300 {
        let (smi, connector, handshakes) = (smi.clone(), connector.clone(), handshakes.clone());
        clients.push(tokio::spawn(async move {
            let turn = handshakes.acquire_owned().await.unwrap();
            let mut tls = smi.tls(&connector).await;
            tls.write_all(b"GET /apis HTTP/1.1\r\nHost: aggregator\r\n")
                .await
                .unwrap();
            tls.flush().await.unwrap();
            drop(turn);
            closed_by_server(tls).await;
        }));
    }
    // Connected, and not even a TLS ClientHello.
    for _ in 0..50 {
        let smi = smi.clone();
        clients.push(tokio::spawn(async move {
            closed_by_server(TcpStream::connect(smi.addr).await.unwrap()).await;
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed() {
    let smi = Smi::start(&["--smi-idle-timeout", "2s"]);
    let tls = smi.tls(&smi.connector(b"h2")).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, connection) = h2::client::handshake(tls).await.unwrap();
    let connection = tokio::spawn(connection);
    // One request answered (503: no Kubernetes API in this test), then nothing.
    let request = http::Request::get("https://localhost/apis")
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 503);
    drop(h2);
    // The connection future ends when the server has closed the connection.
    let _ = tokio::time::timeout(DEADLINE, connection)
        .await
        .expect("the idle h2 connection was left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_cap_is_closed_at_once() {
    let smi = Smi::start(&[
        "--smi-max-connections",
        "3",
        "--smi-header-read-timeout",
        "1h",
    ]);
    // Three silent connections take every place: the server accepts in order.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(smi.addr).await.unwrap());
    }
    closed_by_server(TcpStream::connect(smi.addr).await.unwrap()).await;

    // A place freed is a place for a real client.
    drop(held.pop());
    let connector = smi.connector(b"http/1.1");
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let tcp = TcpStream::connect(smi.addr).await.unwrap();
        let attempt = tokio::time::timeout(DEADLINE, async {
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .ok()?;
            tls.write_all(b"GET /apis HTTP/1.0\r\nHost: aggregator\r\n\r\n")
                .await
                .ok()?;
            let mut answer = Vec::new();
            let _ = tls.read_to_end(&mut answer).await;
            Some(String::from_utf8_lossy(&answer).into_owned())
        })
        .await
        .unwrap();
        if let Some(answer) = attempt.filter(|a| !a.is_empty()) {
            assert!(answer.starts_with("HTTP/1.0 503"), "{answer}");
            break;
        }
        // The server may not have seen the freed connection close yet.
        assert!(tokio::time::Instant::now() < until, "no place freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
}
