//! `kubectl inflight top`: every HTTPAutoscaler of a namespace (or all), refreshed.
//!
//! [`gather`] reads a [`Snapshot`] from the API server, [`render`] turns one into a plain table
//! or a ratatui widget, [`tui`] runs the live view in a terminal.

pub mod gather;
pub mod render;
pub mod tui;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use inflight_api::{MetricType, Mode};

use crate::cli::TopArgs;
use crate::connect::Connection;
use crate::Error;

/// Which namespaces are looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

/// One look at the autoscalers of a scope, ready to render: ages already taken against the
/// time of the look.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub scope: Scope,
    pub rows: Vec<Row>,
    /// Autoscalers beyond the limit, not shown.
    pub more: More,
    /// Why requests/s and p99 are missing, when the SMI API could not give them.
    pub traffic_note: Option<String>,
}

/// How many autoscalers a bounded list left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum More {
    #[default]
    None,
    /// The API server said how many.
    Exactly(u64),
    /// Some, the API server did not say how many.
    Unknown,
}

/// One HTTPAutoscaler.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub namespace: String,
    pub name: String,
    /// `status.mode`: `None` until the operator has written it.
    pub mode: Option<Mode>,
    pub replicas: i32,
    pub ready: i32,
    /// `status.inFlight`.
    pub in_flight: f64,
    pub metric: MetricType,
    /// `spec.metric.target`, per replica.
    pub target: f64,
    /// From the SMI API: `None` when it has nothing for this workload.
    pub traffic: Option<Traffic>,
    /// Since `status.lastActivationTime`.
    pub last_activation: Option<Duration>,
}

impl Row {
    /// What the replicas there are can take at the target: `target × max(replicas, 1)` (one at
    /// zero, which is what the first request wakes).
    pub fn capacity(&self) -> f64 {
        self.target * f64::from(self.replicas.max(1))
    }
}

/// Requests per second and the p99 latency over the SMI API's window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traffic {
    pub rps: f64,
    pub p99: Option<Duration>,
}

/// Runs `top`: the live view on a terminal, else plain tables (one with `--once`).
pub async fn run(connection: &Connection, args: &TopArgs) -> Result<(), Error> {
    let scope = if args.all_namespaces {
        Scope::All
    } else {
        Scope::Namespace(
            args.namespace
                .clone()
                .unwrap_or_else(|| connection.default_namespace.clone()),
        )
    };
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    if args.once {
        let snapshot = gather::snapshot(connection, &scope, limit).await?;
        return print(&render::table(&snapshot));
    }
    if std::io::stdout().is_terminal() {
        return tui::run(connection, &scope, limit, args.interval).await;
    }
    // A pipe: a table per interval until killed; a failure after the first is reported and the
    // next interval tried again.
    let mut first = true;
    loop {
        match gather::snapshot(connection, &scope, limit).await {
            // The reader has gone (`| head`): done.
            Ok(snapshot) => match print(&format!("{}\n", render::table(&snapshot))) {
                Err(Error::Terminal(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(())
                }
                printed => printed?,
            },
            Err(e) if first => return Err(e),
            Err(e) => eprintln!("kubectl-inflight: {e}"),
        }
        first = false;
        tokio::time::sleep(args.interval).await;
    }
}

fn print(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
