//! `/readyz` means the app is ready: the app's own readiness check when one
//! is given (`--app-ready-path`, `--app-ready-port`), else its port accepts a
//! connection. The activator forwards held requests the moment it answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};

/// Polls `/readyz` until it answers `status`; returns the body.
async fn wait_readyz(proxy: &Proxy, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = get(proxy.admin, "/readyz").await;
        if let Some((s, body)) = &answer {
            if *s == status {
                return String::from_utf8_lossy(body).into_owned();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {status}: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An app whose `/ready` answers 200 or 503 as `ready` says, and whose other
/// paths always answer: it listens long before it can serve.
async fn flipping_app(ready: Arc<AtomicBool>) -> App {
    App::start(move |r: Request<hyper::body::Incoming>| {
        let ready = ready.clone();
        async move {
            let status = match r.uri().path() {
                "/ready" if !ready.load(Ordering::SeqCst) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::OK,
            };
            Response::builder().status(status).body(full("")).unwrap()
        }
    })
    .await
}

#[tokio::test]
async fn readyz_follows_the_apps_own_readiness_check() {
    let ready = Arc::new(AtomicBool::new(false));
    let app = flipping_app(ready.clone()).await;
    let proxy = Proxy::start(app.addr, &["--app-ready-path", "/ready"]).await;

    // The app's port accepts connections and serves, yet it is not ready.
    assert_eq!(get(proxy.addr, "/").await.unwrap().0, 200);
    let body = wait_readyz(&proxy, 503).await;
    assert!(
        body.contains("GET /ready") && body.contains("answered 503"),
        "{body}"
    );

    ready.store(true, Ordering::SeqCst);
    assert_eq!(wait_readyz(&proxy, 200).await, "ready\n");
    ready.store(false, Ordering::SeqCst);
    wait_readyz(&proxy, 503).await;
    ready.store(true, Ordering::SeqCst);
    wait_readyz(&proxy, 200).await;

    // The checks go to the app directly: they are not load.
    let stats = proxy.stats().await;
    assert_eq!(stats["requests_total"], 1, "{stats}");
}

#[tokio::test]
async fn the_readiness_check_can_be_on_another_port() {
    let ready = Arc::new(AtomicBool::new(false));
    let health = flipping_app(ready.clone()).await;
    // The app itself answers 503 everywhere: only the health port decides.
    let app = App::start(|_| async {
        Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(full(""))
            .unwrap()
    })
    .await;
    let port = health.addr.port().to_string();
    let proxy = Proxy::start(
        app.addr,
        &["--app-ready-path", "/ready", "--app-ready-port", &port],
    )
    .await;
    let body = wait_readyz(&proxy, 503).await;
    assert!(body.contains(&format!(":{port}")), "{body}");
    ready.store(true, Ordering::SeqCst);
    wait_readyz(&proxy, 200).await;

    // A port alone is a TCP check on it, whatever the app answers.
    let proxy = Proxy::start(app.addr, &["--app-ready-port", &port]).await;
    wait_readyz(&proxy, 200).await;
    drop(health);
    let body = wait_readyz(&proxy, 503).await;
    assert!(body.contains("does not accept connections"), "{body}");
}

#[tokio::test]
async fn a_readiness_check_that_never_answers_is_not_ready() {
    let app = App::start(|r: Request<hyper::body::Incoming>| async move {
        if r.uri().path() == "/ready" {
            std::future::pending::<()>().await;
        }
        Response::new(full("ok"))
    })
    .await;
    let proxy = Proxy::start(
        app.addr,
        &["--app-ready-path", "/ready", "--app-ready-timeout", "200ms"],
    )
    .await;
    let body = wait_readyz(&proxy, 503).await;
    assert!(body.contains("did not answer within 200ms"), "{body}");
}

#[tokio::test]
async fn without_a_readiness_check_ready_means_the_port_accepts() {
    let port = free_port();
    let upstream = format!("127.0.0.1:{port}");
    let proxy = Proxy::start_with_upstream(&upstream, &[]).await;
    let body = wait_readyz(&proxy, 503).await;
    assert!(body.contains("does not accept connections"), "{body}");
    let listener = tokio::net::TcpListener::bind(&upstream).await.unwrap();
    let _app = App::serve(listener, |_| async { Response::new(full("ok")) });
    wait_readyz(&proxy, 200).await;
}

#[tokio::test]
async fn draining_is_not_ready_even_when_the_app_is() {
    let ready = Arc::new(AtomicBool::new(true));
    let app = flipping_app(ready).await;
    let proxy = Proxy::start(
        app.addr,
        &["--app-ready-path", "/ready", "--drain-period", "30s"],
    )
    .await;
    wait_readyz(&proxy, 200).await;
    proxy.signal("TERM");
    assert_eq!(wait_readyz(&proxy, 503).await, "draining\n");
}
