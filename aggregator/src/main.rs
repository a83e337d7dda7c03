use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = inflight_aggregator::Config::parse();
    inflight_runtime::init_tracing("inflight-aggregator");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(inflight_aggregator::run(
        config,
        inflight_runtime::shutdown_signal("inflight-aggregator"),
    ))
}
