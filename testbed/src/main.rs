use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use inflight_testbed::{cluster, components, images, layout};

/// A real one-node Kubernetes cluster with real KEDA on this machine (needs root).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build (once) and start a test bed; prints the kubeconfig's path.
    Up {
        #[arg(long, env = "INFLIGHT_TESTBED", default_value = layout::DEFAULT_NAME)]
        name: String,
        /// Leave KEDA out.
        #[arg(long)]
        no_keda: bool,
        /// Enforce NetworkPolicies (kube-router's firewall, built once; for tests).
        #[arg(long)]
        network_policy: bool,
        /// On failure keep what was started, for inspection.
        #[arg(long)]
        keep_on_failure: bool,
    },
    /// Stop a test bed and remove everything it made.
    Down {
        #[arg(long, env = "INFLIGHT_TESTBED", default_value = layout::DEFAULT_NAME)]
        name: String,
    },
    /// What runs.
    Status {
        #[arg(long, env = "INFLIGHT_TESTBED", default_value = layout::DEFAULT_NAME)]
        name: String,
    },
    /// Print the admin kubeconfig's path.
    Kubeconfig {
        #[arg(long, env = "INFLIGHT_TESTBED", default_value = layout::DEFAULT_NAME)]
        name: String,
    },
    /// Build Kubernetes, etcd, CoreDNS, KEDA, pause and kube-router from Go modules (cached by
    /// version).
    Build,
    /// Build the OCI images (only those whose files changed), and give them to the bed if it is
    /// up (new pods then run them).
    Images {
        /// Where our release binaries are (inflight-proxy, inflight-demo-app…).
        #[arg(long, env = "INFLIGHT_BIN_DIR")]
        bin_dir: PathBuf,
        #[arg(long, env = "INFLIGHT_TESTBED", default_value = layout::DEFAULT_NAME)]
        name: String,
    },
}

fn main() -> ExitCode {
    inflight_runtime::init_tracing("inflight-testbed");
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inflight-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            name,
            no_keda,
            network_policy,
            keep_on_failure,
        } => {
            let opts = cluster::UpOptions {
                keda: !no_keda,
                network_policy,
                keep_on_failure,
            };
            let layout = cluster::up(&name, &opts)
                .with_context(|| format!("bringing test bed {name:?} up"))?;
            println!("{}", layout.kubeconfig().display());
        }
        Command::Down { name } => {
            let left = cluster::down(&name)?;
            if !left.is_empty() {
                anyhow::bail!(
                    "test bed {name:?} is down but these remain:\n  {}",
                    left.join("\n  ")
                );
            }
            eprintln!("[testbed] {name} is down; nothing left behind");
        }
        Command::Status { name } => print!("{}", cluster::status(&name)?),
        Command::Kubeconfig { name } => {
            let layout =
                cluster::existing(&name).with_context(|| format!("test bed {name:?} is not up"))?;
            println!("{}", layout.kubeconfig().display());
        }
        Command::Build => components::run_build(&[])?,
        Command::Images { bin_dir, name } => {
            for built in images::build(&bin_dir)? {
                eprintln!("[testbed images] built {built}");
            }
            if let Some(layout) = cluster::existing(&name).filter(cluster::healthy) {
                if images::stale(&layout) {
                    images::import(&layout)?;
                    eprintln!("[testbed images] imported into the running bed {name:?}");
                }
            }
        }
    }
    Ok(())
}
