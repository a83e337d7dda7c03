//! The command line: `kubectl-inflight top [-n NS | -A] | status NAME [-n NS]`, as kubectl runs a
//! plugin (`kubectl inflight top` runs `kubectl-inflight top`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-inflight",
    version,
    about = "What inflight's HTTPAutoscalers are doing, and why"
)]
pub struct Cli {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach the cluster. Without `--kubeconfig`, kube-rs finds the configuration as kubectl
/// does: `KUBECONFIG` (a list of files, merged), else `~/.kube/config`, else the pod's service
/// account.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// The kubeconfig file to use instead of `KUBECONFIG` / `~/.kube/config`.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// How long one call to the API server may take before it is given up.
    #[arg(long, global = true, env = "INFLIGHT_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// A live view of every HTTPAutoscaler: mode, replicas, in flight, requests/s, p99.
    Top(TopArgs),
    /// Why one HTTPAutoscaler is where it is: conditions, KEDA's view, the HPA's formula, Events.
    Status(StatusArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short, long, conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// How often the view is refreshed.
    #[arg(long, env = "INFLIGHT_TOP_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print one plain table and exit (without it, a terminal gets the live view and anything
    /// else a table per interval).
    #[arg(long)]
    pub once: bool,
    /// The most HTTPAutoscalers shown; the rest are counted.
    #[arg(long, env = "INFLIGHT_TOP_LIMIT", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The HTTPAutoscaler's name.
    pub name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_designs_command_lines_parse() {
        let cli = Cli::try_parse_from(["kubectl-inflight", "top", "-A", "--once"]).unwrap();
        let Command::Top(top) = cli.command else {
            panic!("not top")
        };
        assert!(top.all_namespaces && top.once);
        assert_eq!(top.interval, Duration::from_secs(2));
        assert_eq!(top.limit, 500);

        let cli = Cli::try_parse_from([
            "kubectl-inflight",
            "status",
            "web",
            "-n",
            "shop",
            "--kubeconfig",
            "/tmp/k",
        ])
        .unwrap();
        assert_eq!(cli.cluster.kubeconfig, Some(PathBuf::from("/tmp/k")));
        let Command::Status(status) = cli.command else {
            panic!("not status")
        };
        assert_eq!(
            (status.name.as_str(), status.namespace.as_deref()),
            ("web", Some("shop"))
        );
    }

    #[test]
    fn a_namespace_and_all_namespaces_exclude_each_other() {
        assert!(Cli::try_parse_from(["kubectl-inflight", "top", "-n", "a", "-A"]).is_err());
    }
}
