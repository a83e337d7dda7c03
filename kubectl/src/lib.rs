//! `kubectl inflight`: what the HTTPAutoscalers of a cluster are doing and why.
//!
//! - `top`: every HTTPAutoscaler of a namespace (or all) with its mode, replicas, requests in
//!   flight against its target, requests per second and p99 latency (the SMI API), refreshed live
//!   in a terminal, or printed as a plain table for scripts;
//! - `status NAME`: the spec, the operator's conditions, KEDA's ScaledObject, the value KEDA reads
//!   and the replicas the HPA's formula makes of it, and the last Events.
//!
//! Each command gathers a snapshot from the API server (`gather` modules: every call bounded by a
//! timeout, anything unavailable kept as the reason why) and renders it with pure functions
//! (`render` modules), which the unit tests drive directly.

pub mod cli;
pub mod connect;
pub mod format;
pub mod formula;
pub mod status;
pub mod top;

pub use cli::{Cli, Command};

use std::time::Duration;

/// What stops a command. Anything a view can do without (the SMI API, KEDA's figures, Events)
/// is shown as unavailable instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the HTTPAutoscaler CRD is not installed: install the inflight chart")]
    CrdMissing,
    #[error("HTTPAutoscaler {name} not found in namespace {namespace}")]
    NotFound { namespace: String, name: String },
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what}: no answer within {}", humantime::format_duration(*.after))]
    Timeout { what: String, after: Duration },
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

/// Runs the command line's command to its end.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let connection = connect::connect(&cli.cluster).await?;
    match cli.command {
        Command::Top(args) => top::run(&connection, &args).await,
        Command::Status(args) => status::run(&connection, &args).await,
    }
}
