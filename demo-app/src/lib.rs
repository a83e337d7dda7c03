//! The demo app (`serve`), the demo load generator (`load`) and a one-shot client (`get`).
//!
//! `serve` answers every HTTP request and gRPC call after a configurable
//! latency, so requests pile up in flight the way they do in a real service.
//! `load` sends an open-loop schedule of request rates and prints, once a
//! second, what the inflight-proxy in front of the app reports on its
//! `/stats`.

pub mod app;
pub mod get;
pub mod load;
