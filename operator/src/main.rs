use clap::Parser;

/// `inflight-operator [FLAGS]` runs the operator; `inflight-operator uninstall` is what
/// `helm uninstall` runs first.
#[derive(Debug, Parser)]
#[command(
    name = "inflight-operator",
    version,
    about = "Reconciles HTTPAutoscalers into KEDA ScaledObjects and the Service's endpoints",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: inflight_operator::Config,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Delete every HTTPAutoscaler (the running operators give each workload and Service back),
    /// then the certificates, KEDA's authentication, the Lease and the CRD.
    Uninstall(inflight_operator::uninstall::UninstallFlags),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    inflight_runtime::init_tracing("inflight-operator");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Command::Uninstall(flags)) => runtime.block_on(async {
            let client = kube::Client::try_default().await?;
            inflight_operator::uninstall::run(client, &flags).await
        }),
        None => {
            let config = cli.run;
            config.certs.check().map_err(anyhow::Error::msg)?;
            runtime.block_on(inflight_operator::run(
                config,
                inflight_runtime::shutdown_signal("inflight-operator"),
            ))
        }
    }
}
