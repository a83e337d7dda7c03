//! `kubectl inflight status NAME` (next commit).

use crate::cli::StatusArgs;
use crate::connect::Connection;
use crate::Error;

pub async fn run(_connection: &Connection, args: &StatusArgs) -> Result<(), Error> {
    Err(Error::Kubeconfig(format!("status {}: not yet", args.name)))
}
