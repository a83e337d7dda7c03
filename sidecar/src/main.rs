use clap::Parser;
use inflight_proxy::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    inflight_runtime::init_tracing("inflight-proxy");
    // Worker threads beyond the first are started by `run`, each with a
    // single-threaded runtime of its own; this one runs the first worker,
    // the acceptor, the admin server and the reporter.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(inflight_proxy::run(
        config,
        inflight_runtime::shutdown_signal("inflight-proxy"),
    ))?;
    Ok(())
}
