//! `kubectl inflight status NAME`: why an HTTPAutoscaler is where it is. [`gather`] reads a
//! [`Snapshot`] (the autoscaler; KEDA's ScaledObject, its HPA and the value KEDA's metrics server
//! gives that HPA; the Events about it), [`render`] writes it out. What cannot be read is kept as
//! the reason why and shown as unavailable.

pub mod gather;
pub mod render;

use std::io::Write;

use inflight_api::{HttpAutoscalerSpec, HttpAutoscalerStatus};
use k8s_openapi::jiff::Timestamp;

use crate::cli::StatusArgs;
use crate::connect::Connection;
use crate::Error;

/// Everything `status` shows, read at `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub now: Timestamp,
    pub namespace: String,
    pub name: String,
    pub spec: HttpAutoscalerSpec,
    pub status: HttpAutoscalerStatus,
    pub generation: Option<i64>,
    pub scaled_object: Result<ScaledObject, String>,
    pub hpa: Result<Hpa, String>,
    pub keda_value: Result<KedaValue, String>,
    /// Oldest first, at most [`gather::EVENTS`].
    pub events: Result<Vec<Event>, String>,
}

/// KEDA's ScaledObject, as far as status shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScaledObject {
    pub name: String,
    pub conditions: Vec<KedaCondition>,
    /// `status.hpaName`: the HPA KEDA made.
    pub hpa_name: Option<String>,
    /// `status.externalMetricNames`.
    pub metric_names: Vec<String>,
}

/// A condition of KEDA's (no transition time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KedaCondition {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// The HPA KEDA made for the ScaledObject.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hpa {
    pub name: String,
    pub min: Option<i32>,
    pub max: i32,
    pub current: Option<i32>,
    pub desired: i32,
    /// The external metric it scales on and the selector it asks with (`k=v,…`).
    pub metric: Option<(String, String)>,
    /// Its target per replica (`averageValue`), as written.
    pub target: Option<String>,
}

/// The value KEDA's metrics server gives the HPA.
#[derive(Debug, Clone, PartialEq)]
pub struct KedaValue {
    pub metric: String,
    pub value: f64,
}

/// An Event about the autoscaler.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub time: Option<Timestamp>,
    pub type_: String,
    pub reason: String,
    pub note: String,
    /// How many times it happened (a series), 1 if once.
    pub count: i32,
}

pub async fn run(connection: &Connection, args: &StatusArgs) -> Result<(), Error> {
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| connection.default_namespace.clone());
    let snapshot = gather::snapshot(connection, &namespace, &args.name).await?;
    let mut out = std::io::stdout().lock();
    for line in render::lines(&snapshot) {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}
