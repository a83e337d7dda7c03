use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = inflight_operator::Config::parse();
    config.certs.check().map_err(anyhow::Error::msg)?;
    inflight_runtime::init_tracing("inflight-operator");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(inflight_operator::run(
        config,
        inflight_runtime::shutdown_signal("inflight-operator"),
    ))
}
