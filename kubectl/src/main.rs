use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = inflight_kubectl::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(inflight_kubectl::run(cli))?;
    Ok(())
}
