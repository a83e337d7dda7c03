//! `get`: a minimal HTTP client for images without a shell, so a pod of the demo image can call a
//! Service by its DNS name (the test bed's cluster tests use it).

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// GETs `url` `count` times, printing `<status> <body>` per answer; fails on the first answer that
/// is not 2xx or on a connection error, naming it.
pub async fn run(url: &str, count: u32, timeout: Duration) -> anyhow::Result<()> {
    let uri: hyper::Uri = url.parse().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    for i in 0..count {
        let response = tokio::time::timeout(timeout, client.get(uri.clone()))
            .await
            .map_err(|_| anyhow::anyhow!("request {i} to {url}: no answer within {timeout:?}"))?
            .map_err(|e| anyhow::anyhow!("request {i} to {url}: {e:?}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "{} {}",
            status.as_u16(),
            String::from_utf8_lossy(&body).trim_end()
        );
        anyhow::ensure!(status.is_success(), "request {i} to {url}: status {status}");
    }
    Ok(())
}
