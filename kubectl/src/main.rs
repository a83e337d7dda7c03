use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = inflight_kubectl::Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: inflight_kubectl::Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(inflight_kubectl::run(cli))?;
    Ok(())
}
