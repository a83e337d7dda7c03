//! The webhook's HTTP side: `POST /mutate` with an AdmissionReview, its body bounded in size and
//! in time, answered with an AdmissionReview or a 4xx that says why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};

use inflight_runtime::admin;

use crate::metrics::Metrics;
use crate::review;
use crate::sidecar::Settings;

/// The path the webhook configuration names.
pub const PATH: &str = "/mutate";

#[derive(Debug)]
pub struct Webhook {
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub body_timeout: Duration,
    pub max_body_bytes: usize,
}

impl Webhook {
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let response = self.route(request).await;
        self.metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        response
    }

    async fn route(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.uri().path() != PATH {
            return text(
                StatusCode::NOT_FOUND,
                format!("not found: the webhook is POST {PATH}"),
            );
        }
        if request.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{PATH} takes POST only"),
            );
        }
        let body = Limited::new(request.into_body(), self.max_body_bytes);
        let body = match tokio::time::timeout(self.body_timeout, body.collect()).await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(error)) => {
                let too_large = error
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                return if too_large {
                    self.metrics.error("body_too_large");
                    text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is over {} bytes", self.max_body_bytes),
                    )
                } else {
                    self.metrics.error("body_read");
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("the body could not be read: {error}"),
                    )
                };
            }
            Err(_) => {
                self.metrics.error("body_timeout");
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {:?}", self.body_timeout),
                );
            }
        };
        match review::answer(&body, &self.settings, &self.metrics) {
            Ok(json) => {
                let mut r = Response::new(Full::new(Bytes::from(json)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(why) => {
                self.metrics.error("bad_request");
                text(StatusCode::BAD_REQUEST, why)
            }
        }
    }
}

fn text(status: StatusCode, why: String) -> Response<Full<Bytes>> {
    admin::text(status, why + "\n")
}
