use clap::Parser;
use inflight_proxy::Config;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    inflight_runtime::init_tracing("inflight-proxy");
    // `run` starts the workers, each a thread with a single-threaded runtime
    // of its own; this one is the control plane: the acceptor, the admin
    // server and the reporter, off the data plane's event loops.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(inflight_proxy::run(
        config,
        inflight_runtime::shutdown_signal("inflight-proxy"),
    ))?;
    Ok(())
}
