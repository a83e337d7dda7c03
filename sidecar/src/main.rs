use clap::Parser;
use inflight_proxy::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    init_tracing();
    // Worker threads beyond the first are started by `run`, each with a
    // single-threaded runtime of its own; this one runs the first worker,
    // the acceptor, the admin server and the reporter.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(inflight_proxy::run(config, shutdown_signal()))?;
    Ok(())
}

/// Logs at the level `RUST_LOG` asks (`info`, or `inflight_proxy=debug,h2=warn`
/// style directives), JSON when `INFLIGHT_LOG_FORMAT=json`. `Targets` rather
/// than `EnvFilter`: the sidecar has no use for regex-matched span fields,
/// and leaving the regex engine out keeps the resident binary small.
fn init_tracing() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;

    let requested = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = match requested.parse::<Targets>() {
        Ok(filter) if !requested.trim().is_empty() => filter,
        Ok(_) => Targets::new().with_default(tracing::Level::INFO),
        Err(error) => {
            eprintln!("inflight-proxy: ignoring RUST_LOG={requested:?}: {error}; logging at info");
            Targets::new().with_default(tracing::Level::INFO)
        }
    };
    let json = std::env::var("INFLIGHT_LOG_FORMAT").as_deref() == Ok("json");
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(tracing_subscriber::fmt::layer().json())
            .init();
    } else {
        registry.with(tracing_subscriber::fmt::layer()).init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
