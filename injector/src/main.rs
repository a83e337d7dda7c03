use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = inflight_injector::Config::parse();
    inflight_runtime::init_tracing("inflight-injector");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(inflight_injector::run(
        config,
        inflight_runtime::shutdown_signal("inflight-injector"),
    ))
}
