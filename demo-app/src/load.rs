//! An open-loop load generator: requests are sent at the scheduled rate
//! whether or not earlier ones have finished, as real clients do, so slow
//! answers show up as requests in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// One step of the schedule: `rate` requests/s for `length`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub rate: f64,
    pub length: Duration,
}

/// Parses `RATE:DURATION,…`, e.g. `20:10s,200:15s,0:5s`.
pub fn parse_schedule(text: &str) -> Result<Vec<Step>, String> {
    text.split(',')
        .map(|step| {
            let (rate, length) = step
                .split_once(':')
                .ok_or_else(|| format!("{step:?} is not RATE:DURATION"))?;
            let rate: f64 = rate
                .trim()
                .parse()
                .map_err(|e| format!("{rate:?} is not a rate: {e}"))?;
            if !rate.is_finite() || rate < 0.0 {
                return Err(format!("{rate} is not a rate"));
            }
            let length =
                humantime::parse_duration(length.trim()).map_err(|e| format!("{length:?}: {e}"))?;
            Ok(Step { rate, length })
        })
        .collect()
}

#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Answers whose request an activator held while the workload woke, and the longest hold.
    held: AtomicU64,
    longest_hold_ms: AtomicU64,
}

/// How long the activator held a request, from its `x-inflight-cold-start` header (`1834ms`).
fn hold_ms(response: &http::Response<hyper::body::Incoming>) -> Option<u64> {
    let value = response
        .headers()
        .get(inflight_proto::names::COLD_START_HEADER)?;
    value.to_str().ok()?.strip_suffix("ms")?.parse().ok()
}

/// Runs the schedule against `target` (`http://host:port/path`), printing the
/// proxy's `/stats` from `admin` once a second.
/// With `host`, each request carries it as its Host header (a Service reached at its ClusterIP
/// from outside the cluster, whose activator routes by name).
pub async fn run(
    target: String,
    host: Option<String>,
    admin: Option<String>,
    schedule: Vec<Step>,
) -> anyhow::Result<()> {
    let host = host
        .map(|h| http::HeaderValue::try_from(h).map_err(|e| anyhow::anyhow!("--host: {e}")))
        .transpose()?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let tally = Arc::new(Tally::default());
    let reporter = tokio::spawn(print_figures(admin, tally.clone()));
    for step in schedule {
        let started = tokio::time::Instant::now();
        let end = started + step.length;
        if step.rate <= 0.0 {
            tokio::time::sleep_until(end).await;
            continue;
        }
        let gap = Duration::from_secs_f64(1.0 / step.rate);
        let mut next = started;
        while next < end {
            tokio::time::sleep_until(next).await;
            next += gap;
            let client = client.clone();
            let tally = tally.clone();
            let uri = target.clone();
            let host = host.clone();
            tally.sent.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut request = Request::get(uri);
                if let Some(host) = host {
                    request = request.header(http::header::HOST, host);
                }
                let Ok(request) = request.body(Empty::new()) else {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let ok = match client.request(request).await {
                    Ok(r) => {
                        if let Some(ms) = hold_ms(&r) {
                            tally.held.fetch_add(1, Ordering::Relaxed);
                            tally.longest_hold_ms.fetch_max(ms, Ordering::Relaxed);
                        }
                        r.status().is_success() && r.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                let counter = if ok { &tally.ok } else { &tally.failed };
                counter.fetch_add(1, Ordering::Relaxed);
            });
        }
    }
    // Let the last requests finish and show in the figures.
    tokio::time::sleep(Duration::from_secs(2)).await;
    reporter.abort();
    let failed = tally.failed.load(Ordering::Relaxed);
    println!(
        "done: sent {}, ok {}, failed {}; held while the workload woke: {}, the longest {} ms",
        tally.sent.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        failed,
        tally.held.load(Ordering::Relaxed),
        tally.longest_hold_ms.load(Ordering::Relaxed),
    );
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    Ok(())
}

async fn print_figures(admin: Option<String>, tally: Arc<Tally>) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    println!(
        "{:>5} {:>8} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8}",
        "t(s)", "sent/s", "proxy:in", "proxy:req", "req/s", "2xx", "5xx", "failed"
    );
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let (mut last_sent, mut last_requests, mut t) = (0, 0, 0u64);
    loop {
        ticker.tick().await;
        let sent = tally.sent.load(Ordering::Relaxed);
        let stats = match &admin {
            Some(admin) => fetch_stats(&client, admin).await,
            None => None,
        };
        let field = |path: &[&str]| {
            let mut v = stats.as_ref()?;
            for p in path {
                v = v.get(*p)?;
            }
            v.as_u64()
        };
        let requests = field(&["requests_total"]).unwrap_or(0);
        let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        println!(
            "{t:>5} {:>8} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8}",
            sent - last_sent,
            show(field(&["in_flight"])),
            show(field(&["requests_total"])),
            requests.saturating_sub(last_requests),
            show(field(&["responses", "2xx"])),
            show(field(&["responses", "5xx"])),
            tally.failed.load(Ordering::Relaxed),
        );
        (last_sent, last_requests, t) = (sent, requests, t + 1);
    }
}

async fn fetch_stats(
    client: &Client<HttpConnector, Empty<Bytes>>,
    admin: &str,
) -> Option<serde_json::Value> {
    let request = Request::get(format!("http://{admin}/stats"))
        .body(Empty::new())
        .ok()?;
    let response = client.request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_schedule("20:10s, 0:500ms"),
            Ok(vec![
                Step {
                    rate: 20.0,
                    length: Duration::from_secs(10)
                },
                Step {
                    rate: 0.0,
                    length: Duration::from_millis(500)
                },
            ])
        );
        assert!(parse_schedule("20").is_err_and(|e| e.contains("RATE:DURATION")));
        assert!(parse_schedule("-1:1s").is_err());
        assert!(parse_schedule("5:forever").is_err());
    }
}
