use inflight_activator::Config;

fn main() -> anyhow::Result<()> {
    let config = match Config::try_from_args(std::env::args_os()) {
        Ok(config) => config,
        Err(error) => error.exit(),
    };
    inflight_runtime::init_tracing("inflight-activator");
    // `run` starts the workers, each a thread with a single-threaded runtime of its own; this
    // one is the control plane: the acceptor, the admin server, the watches, the probes and the
    // reports.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default().await?;
        let activator = inflight_activator::activator(&config);
        inflight_activator::run(
            config,
            activator,
            Some(client),
            inflight_runtime::shutdown_signal("inflight-activator"),
        )
        .await?;
        Ok(())
    })
}
