//! What every inflight binary does the same way, in one place: logging, stopping on SIGTERM, the
//! admin server and the limits of every HTTP server, readiness checks, HTTPS with reloaded certificates and client CAs
//! (feature `tls`), poison-tolerant locks, wall-clock milliseconds.

pub mod admin;
#[cfg(feature = "tls")]
pub mod client_ca;
pub mod http;
#[cfg(feature = "tls")]
pub mod https;
pub mod probe;
pub mod sync;
pub mod time;
#[cfg(feature = "tls")]
pub mod tls;

pub use sync::{lock, read, write};
pub use time::now_ms;

/// Logs at the level `RUST_LOG` asks (`info`, or `inflight_proxy=debug,h2=warn` style
/// directives), JSON when `INFLIGHT_LOG_FORMAT=json`, to stderr (stdout stays for what a command
/// prints, such as `inflight-testbed kubeconfig`). `Targets` rather than `EnvFilter`: no
/// binary needs regex-matched span fields, and leaving the regex engine out keeps the resident
/// binaries small (the sidecar runs in every pod).
pub fn init_tracing(binary: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    let requested = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = match requested.parse::<Targets>() {
        Ok(filter) if !requested.trim().is_empty() => filter,
        Ok(_) => Targets::new().with_default(tracing::Level::INFO),
        Err(error) => {
            eprintln!("{binary}: ignoring RUST_LOG={requested:?}: {error}; logging at info");
            Targets::new().with_default(tracing::Level::INFO)
        }
    };
    let json = std::env::var("INFLIGHT_LOG_FORMAT").as_deref() == Ok("json");
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init();
    }
}

/// Completes on SIGTERM or Ctrl-C. As PID 1 of a container the kernel ignores SIGTERM unless the
/// process handles it, so without this a pod would wait out its whole grace period.
pub async fn shutdown_signal(binary: &str) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops {binary}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
