//! SIGTERM: `/readyz` turns 503 at once, serving goes on for the drain
//! period, then clients are told to go away (HTTP/2 GOAWAY) and what is in
//! flight finishes; no request that was in flight is cut. The hard limit
//! ends the wait.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;

#[tokio::test]
async fn sigterm_under_load_loses_no_request() {
    let app = App::start(|r: Request<hyper::body::Incoming>| async move {
        let ms = if r.uri().path() == "/slow" { 2000 } else { 20 };
        slow_ok(Duration::from_millis(ms)).await
    })
    .await;
    let mut proxy = Proxy::start(
        app.addr,
        &["--drain-period", "1s", "--drain-timeout", "20s"],
    )
    .await;

    // Long requests in flight at SIGTERM; they outlast the drain period.
    let client = http1_client();
    let mut slow = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        let uri = format!("http://{}/slow", proxy.addr);
        slow.push(tokio::spawn(async move {
            let response = client
                .request(Request::get(uri).body(full("")).unwrap())
                .await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        }));
    }
    // Steady load from keep-alive clients. Like a Service whose endpoint
    // is removed once the pod turns unready, they stop sending new requests
    // a moment after /readyz says 503, well inside the drain period.
    let (unready_tx, unready) = tokio::sync::watch::channel(false);
    let mut load = Vec::new();
    for _ in 0..8 {
        let client = http1_client();
        let uri = format!("http://{}/fast", proxy.addr);
        let mut unready = unready.clone();
        load.push(tokio::spawn(async move {
            let (mut ok, mut after_refused) = (0u32, Vec::new());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            let mut stop_at = None;
            while tokio::time::Instant::now() < deadline {
                if stop_at.is_none() && *unready.borrow_and_update() {
                    stop_at = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                }
                if stop_at.is_some_and(|t| tokio::time::Instant::now() > t) {
                    break;
                }
                match client
                    .request(Request::get(&uri).body(full("")).unwrap())
                    .await
                {
                    Ok(r) => {
                        let status = r.status();
                        let body = r.into_body().collect().await.map(|b| b.to_bytes());
                        match body {
                            Ok(b) if status == 200 && b == "ok" => ok += 1,
                            other => after_refused.push(format!("{status} {other:?}")),
                        }
                    }
                    Err(e) => after_refused.push(format!("{e:?}")),
                }
            }
            (ok, after_refused)
        }));
    }
    proxy
        .wait_stats(Duration::from_secs(5), |s| {
            s["in_flight"].as_u64() >= Some(10)
        })
        .await;
    let before = proxy.stats().await["requests_total"].as_u64().unwrap();
    proxy.signal("TERM");

    let mut readyz = 0;
    for _ in 0..50 {
        readyz = get(proxy.admin, "/readyz").await.map(|r| r.0).unwrap_or(0);
        if readyz == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(readyz, 503, "/readyz turns 503 at once on SIGTERM");
    unready_tx.send(true).unwrap();
    // Still serving during the drain period.
    assert_eq!(get(proxy.addr, "/fast").await.unwrap().0, 200);
    let during = proxy.stats().await["requests_total"].as_u64().unwrap();
    assert!(during > before, "requests are served while draining");

    for s in slow {
        let (status, body) = s.await.unwrap().expect("slow request completes");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
    }
    let mut served = 0;
    for l in load {
        let (ok, errors) = l.await.unwrap();
        assert!(
            errors.is_empty(),
            "requests failed during drain: {errors:?}"
        );
        served += ok;
    }
    assert!(served > 0);
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .expect("proxy exits after draining")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn an_idle_proxy_exits_after_the_drain_period() {
    let app = App::start(|_r| slow_ok(Duration::ZERO)).await;
    let mut proxy = Proxy::start(app.addr, &["--drain-period", "300ms"]).await;
    proxy.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn the_drain_timeout_is_a_hard_limit() {
    let app = App::start(|_r| slow_ok(Duration::from_secs(60))).await;
    let mut proxy = Proxy::start(
        app.addr,
        &["--drain-period", "100ms", "--drain-timeout", "1s"],
    )
    .await;
    let addr = proxy.addr;
    let stuck = tokio::spawn(async move { get(addr, "/").await });
    proxy
        .wait_stats(Duration::from_secs(5), |s| s["in_flight"] == 1)
        .await;
    proxy.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .expect("exits at the hard limit, not after the 60 s request")
        .unwrap();
    assert!(status.success());
    assert!(
        stuck.await.unwrap().is_none(),
        "the over-long request was cut"
    );
}

#[tokio::test]
async fn a_busy_h2c_client_is_told_to_go_away_when_the_drain_period_ends() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    // The app counts the requests it answered in full.
    let answered = Arc::new(AtomicU64::new(0));
    let counted = answered.clone();
    let app = App::start(move |_r| {
        let counted = counted.clone();
        async move {
            let response = slow_ok(Duration::from_millis(100)).await;
            counted.fetch_add(1, Ordering::SeqCst);
            response
        }
    })
    .await;
    // A hard limit far beyond the drain period: only GOAWAY ends this drain
    // early, since the client below never leaves the proxy idle.
    let mut proxy = Proxy::start(
        app.addr,
        &["--drain-period", "1s", "--drain-timeout", "120s"],
    )
    .await;

    // One pooled h2c connection. A new request every 10 ms, each taking the
    // app 100 ms, so about ten are always open and the proxy is never idle,
    // until a request fails: the proxy has gone away and refuses new
    // connections.
    let client = http2_client();
    let uri = format!("http://{}/work", proxy.addr);
    let load = tokio::spawn(async move {
        let mut sent = Vec::new();
        let (failed_tx, failed) = tokio::sync::mpsc::unbounded_channel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while tokio::time::Instant::now() < deadline && failed.is_empty() {
            tick.tick().await;
            let (client, uri, failed_tx) = (client.clone(), uri.clone(), failed_tx.clone());
            sent.push(tokio::spawn(async move {
                let response = match client
                    .request(Request::get(&uri).body(full("")).unwrap())
                    .await
                {
                    Ok(response) => response,
                    Err(error) => {
                        let _ = failed_tx.send(());
                        return Err(error);
                    }
                };
                assert_eq!(response.status(), 200);
                // A stream the proxy accepted is never cut.
                let body = response.into_body().collect().await;
                assert_eq!(&body.expect("a whole body").to_bytes()[..], b"ok");
                Ok(())
            }));
        }
        sent
    });
    proxy
        .wait_stats(Duration::from_secs(10), |s| {
            s["in_flight"].as_u64() >= Some(4)
        })
        .await;
    let signalled = tokio::time::Instant::now();
    proxy.signal("TERM");

    let status = tokio::time::timeout(Duration::from_secs(60), proxy.child.wait())
        .await
        .expect("the proxy exits soon after the drain period, not at the hard limit")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    eprintln!("exited {:?} after SIGTERM", signalled.elapsed());

    let (mut served, mut sent_away) = (0, 0);
    for request in load.await.unwrap() {
        match request.await.unwrap() {
            Ok(()) => served += 1,
            // Sent away, not cut: a request that failed was refused a new
            // connection, or was still queued on the old one when the proxy
            // closed it (hyper's "canceled": never written). Either way the
            // app never saw it, which the count below checks.
            Err(error) => {
                let canceled = std::error::Error::source(&error)
                    .and_then(|e| e.downcast_ref::<hyper::Error>())
                    .is_some_and(hyper::Error::is_canceled);
                assert!(error.is_connect() || canceled, "{error:?}");
                sent_away += 1;
            }
        }
    }
    assert!(sent_away > 0, "the client was sent away");
    assert!(served > 0);
    assert_eq!(
        served,
        answered.load(Ordering::SeqCst),
        "every request the app answered reached the client"
    );
}

#[tokio::test]
async fn a_connection_that_never_sent_a_byte_does_not_hold_up_the_drain() {
    let app = App::start(|_r| slow_ok(Duration::ZERO)).await;
    let mut proxy = Proxy::start(
        app.addr,
        &[
            "--drain-period",
            "300ms",
            "--drain-timeout",
            "120s",
            "--header-read-timeout",
            "120s",
        ],
    )
    .await;
    // A client pool's pre-opened connection, silent.
    let silent = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // Served once it speaks: the proxy has accepted it.
    assert_eq!(get(proxy.addr, "/").await.unwrap().0, 200);
    proxy.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), proxy.child.wait())
        .await
        .expect("the proxy exits without waiting out the silent connection's deadline")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    drop(silent);
}

/// `GET /drain` with a token, as the app container's preStop hook sends it.
async fn drain_call(proxy: &Proxy, token: Option<&str>) -> (u16, String) {
    let mut request = Request::get(format!("http://{}/drain", proxy.admin));
    if let Some(token) = token {
        request = request.header("x-inflight-drain-token", token);
    }
    let response = http1_client()
        .request(request.body(full("")).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_prestop_drain_call_answers_once_nothing_is_in_flight_and_the_proxy_then_exits() {
    let app = App::start(|r: Request<hyper::body::Incoming>| async move {
        let ms = if r.uri().path() == "/slow" { 1500 } else { 0 };
        slow_ok(Duration::from_millis(ms)).await
    })
    .await;
    let mut proxy = Proxy::start(
        app.addr,
        &["--drain-token", "pod-token", "--drain-period", "300ms"],
    )
    .await;

    // Without the token, or with another, nothing drains.
    assert_eq!(drain_call(&proxy, None).await.0, 403);
    assert_eq!(drain_call(&proxy, Some("guess")).await.0, 403);
    assert_eq!(get(proxy.admin, "/readyz").await.unwrap().0, 200);

    let slow: Vec<_> = (0..4)
        .map(|_| {
            let uri = format!("http://{}/slow", proxy.addr);
            tokio::spawn(async move {
                let r = http1_client()
                    .request(Request::get(uri).body(full("")).unwrap())
                    .await?;
                let status = r.status();
                r.into_body().collect().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
            })
        })
        .collect();
    proxy
        .wait_stats(Duration::from_secs(5), |s| {
            s["in_flight"].as_u64() >= Some(4)
        })
        .await;
    let call = tokio::spawn({
        let admin = proxy.admin;
        async move {
            let response = http1_client()
                .request(
                    Request::get(format!("http://{admin}/drain"))
                        .header("x-inflight-drain-token", "pod-token")
                        .body(full(""))
                        .unwrap(),
                )
                .await
                .unwrap();
            response.status().as_u16()
        }
    });
    // Draining at once, and still serving.
    let mut readyz = 0;
    for _ in 0..100 {
        readyz = get(proxy.admin, "/readyz").await.map_or(0, |r| r.0);
        if readyz == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(readyz, 503);

    // The answer comes once the drain is over, and no request in flight was cut: the proxy
    // exits right after answering, so one still in flight then would have failed.
    assert_eq!(call.await.unwrap(), 200);
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    let status = tokio::time::timeout(Duration::from_secs(10), proxy.child.wait())
        .await
        .expect("the proxy exits after the drain")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn without_a_drain_token_there_is_no_drain_endpoint() {
    let app = App::start(|_r| slow_ok(Duration::ZERO)).await;
    let proxy = Proxy::start(app.addr, &[]).await;
    assert_eq!(drain_call(&proxy, Some("anything")).await.0, 404);
    assert_eq!(get(proxy.admin, "/readyz").await.unwrap().0, 200);
}
