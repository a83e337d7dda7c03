//! Bodies stream through the proxy: 256 MiB up and 256 MiB down, while the
//! proxy's peak resident memory stays under 32 MiB.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};

const TOTAL: u64 = 256 << 20;
const CHUNK: usize = 64 << 10;

fn generated() -> Body {
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    let frames = futures_util::stream::iter(0..TOTAL / CHUNK as u64).map(move |_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.clone()))
    });
    BodyExt::boxed(StreamBody::new(frames))
}

async fn app(request: Request<hyper::body::Incoming>) -> Response<Body> {
    match request.uri().path() {
        "/upload" => {
            let mut body = request.into_body();
            let mut seen = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    assert!(data.iter().all(|b| *b == 0x5a));
                    seen += data.len() as u64;
                }
            }
            Response::new(full(seen.to_string()))
        }
        _ => Response::new(generated()),
    }
}

async fn count_download(response: Response<hyper::body::Incoming>) -> u64 {
    let mut body = response.into_body();
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            seen += data.len() as u64;
        }
    }
    seen
}

async fn round_trip(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
    proxy: &Proxy,
    version: Version,
) {
    let upload = Request::post(format!("http://{}/upload", proxy.addr))
        .version(version)
        .body(generated())
        .unwrap();
    let response = client.request(upload).await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed, TOTAL.to_string());

    let download = Request::get(format!("http://{}/download", proxy.addr))
        .version(version)
        .body(full(""))
        .unwrap();
    let response = client.request(download).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(count_download(response).await, TOTAL);
}

#[tokio::test]
async fn streams_256_mib_each_way_in_bounded_memory() {
    let app = App::start(app).await;
    let proxy = Proxy::start(app.addr, &[]).await;
    let (_, idle_rss) = proxy.memory();

    round_trip(&http1_client(), &proxy, Version::HTTP_11).await;
    round_trip(&http2_client(), &proxy, Version::HTTP_2).await;

    let (peak, _) = proxy.memory();
    eprintln!(
        "proxy RSS idle {} KiB, peak {} KiB",
        idle_rss >> 10,
        peak >> 10
    );
    assert!(
        peak < 32 << 20,
        "peak RSS {} KiB is over 32 MiB",
        peak >> 10
    );
    let stats = proxy.stats().await;
    assert_eq!(stats["responses"]["2xx"], 4);
}
