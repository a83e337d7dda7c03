use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use inflight_demo_app::{app, get, load};

#[derive(Debug, Parser)]
#[command(name = "inflight-demo-app", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP/1.1, h2c and gRPC on one port with a configurable latency;
    /// exits on SIGTERM or Ctrl-C.
    Serve {
        #[arg(long, env = "DEMO_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// How long each request takes.
        #[arg(long, env = "DEMO_LATENCY", default_value = "50ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// Latency varies uniformly by up to this much either way.
        #[arg(long, env = "DEMO_JITTER", default_value = "0ms", value_parser = humantime::parse_duration)]
        jitter: Duration,
    },
    /// Send an open-loop schedule of request rates and print the proxy's live figures.
    Load {
        /// URL to load, e.g. http://127.0.0.1:15080/
        #[arg(long)]
        target: String,
        /// The Host header of every request (default: the target's).
        #[arg(long)]
        host: Option<String>,
        /// The proxy's admin address, whose /stats is printed every second.
        #[arg(long)]
        admin: Option<String>,
        /// RATE:DURATION steps, comma-separated.
        #[arg(long, default_value = "20:5s,200:10s,50:5s,0:3s")]
        schedule: String,
    },
    /// GET a URL (COUNT times) and print each status and body; fails unless every answer is 2xx.
    Get {
        url: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            listen,
            latency,
            jitter,
        } => {
            let config = app::AppConfig { latency, jitter };
            app::serve(
                listen,
                config,
                inflight_runtime::shutdown_signal("inflight-demo-app"),
            )
            .await
        }
        Command::Load {
            target,
            host,
            admin,
            schedule,
        } => {
            let schedule =
                load::parse_schedule(&schedule).map_err(|e| anyhow::anyhow!("--schedule: {e}"))?;
            load::run(target, host, admin, schedule).await
        }
        Command::Get {
            url,
            count,
            timeout,
        } => get::run(&url, count, timeout).await,
    }
}
