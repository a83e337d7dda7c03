//! Slow and idle clients of the SMI API (HTTPS), against the real aggregator binary: a TLS
//! handshake never finished, half-sent request heads and silent connections are closed, an idle h2
//! connection is closed, and the connection cap closes one more connection at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::smi::{closed_by_server, Ca, Smi, DEADLINE};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The SMI API with a requestheader CA (else its port never listens), callers without its
/// certificates.
fn start(extra: &[&str]) -> Smi {
    let smi = Smi::start(Some(&Ca::new("front-proxy-ca")), extra, &[]);
    smi.wait_listening();
    smi
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_half_sent_heads_and_silent_connections_are_closed() {
    let smi = Arc::new(start(&[
        "--smi-header-read-timeout",
        "5s",
        "--smi-idle-timeout",
        "1h",
        "--smi-max-connections",
        "1000",
    ]));
    let connector = smi.connector(b"http/1.1", None);
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
async fn a_tls_handshake_never_finished_is_dropped() {
    // The idle timeout is out of reach: only the handshake deadline can close these.
    let smi = start(&[
        "--smi-header-read-timeout",
        "2s",
        "--smi-idle-timeout",
        "1h",
    ]);
    // Connected, and not a byte of ClientHello.
    let silent = TcpStream::connect(smi.addr).await.unwrap();
    // Half a ClientHello: a TLS record header announcing 512 bytes, and 5 of them.
    let mut half = TcpStream::connect(smi.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03])
        .await
        .unwrap();
    tokio::join!(closed_by_server(silent), closed_by_server(half));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_connection_is_closed() {
    let smi = start(&["--smi-idle-timeout", "2s"]);
    let tls = smi.tls(&smi.connector(b"h2", None)).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, connection) = h2::client::handshake(tls).await.unwrap();
    let connection = tokio::spawn(connection);
    // One request answered (401: no client certificate), then nothing.
    let request = http::Request::get("https://localhost/apis")
        .body(())
        .unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 401);
    drop(h2);
    // The connection future ends when the server has closed the connection.
    let _ = tokio::time::timeout(DEADLINE, connection)
        .await
        .expect("the idle h2 connection was left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_cap_is_closed_at_once() {
    let smi = start(&[
        "--smi-max-connections",
        "3",
        "--smi-header-read-timeout",
        "1h",
    ]);
    // Four silent connections for three places: the server accepts in order and closes the one
    // past the cap at once. Which one is not known: `wait_listening`'s probe connection holds a
    // place until the server has seen it close, which on a loaded machine can be after the third.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(smi.addr).await.unwrap());
    }
    let closed = one_closed_by_server(&held).await;
    held.remove(closed);

    // A place freed is a place for a real client.
    drop(held.pop());
    let connector = smi.connector(b"http/1.1", None);
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
            assert!(answer.starts_with("HTTP/1.0 401"), "{answer}");
            break;
        }
        // The server may not have seen the freed connection close yet.
        assert!(tokio::time::Instant::now() < until, "no place freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
}

/// Which of `streams` the server closed: polled until one reads as closed, or the test fails at
/// the deadline.
async fn one_closed_by_server(streams: &[TcpStream]) -> usize {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        for (i, stream) in streams.iter().enumerate() {
            let mut buf = [0u8; 1];
            match stream.try_read(&mut buf) {
                Ok(0) => return i,
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return i,
                _ => {}
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the server left every connection past the cap open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
