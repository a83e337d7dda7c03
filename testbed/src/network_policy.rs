//! NetworkPolicies enforced on a bed, for the tests that need them (never shipped): kube-router's
//! firewall, as a daemon of the bed in its network namespace. It keeps its iptables chains and
//! ipsets there, so deleting the namespace at `down` removes them with the rest.

use crate::cluster::{spawn, wait_for};
use crate::layout::Layout;
use crate::process::{self, run};
use crate::{components, daemons, Error};

/// The daemon's name (its log and PID file).
pub(crate) const DAEMON: &str = "kube-router";

/// Whether the bed's engine runs.
pub fn running(layout: &Layout) -> bool {
    process::recorded(layout)
        .iter()
        .any(|(name, r)| name == DAEMON && process::alive(*r))
}

/// Starts the engine unless it runs (building it first if need be); returns once its chains are
/// hooked into the namespace's filter table, from when on every policy it sees is enforced.
pub fn start(layout: &Layout) -> Result<(), Error> {
    if running(layout) {
        return Ok(());
    }
    components::ensure_built(true)?;
    let daemon = spawn(layout, &daemons::kube_router(layout))?;
    let netns = format!("--net=/run/netns/{}", layout.netns());
    wait_for(
        "kube-router's chains in the FORWARD, INPUT and OUTPUT chains",
        60,
        layout,
        DAEMON,
        || {
            if !process::alive(daemon) {
                return Err(Error::Died {
                    what: DAEMON.to_owned(),
                    log: log(layout),
                    tail: process::log_tail(&log(layout), 30),
                });
            }
            Ok(["FORWARD", "INPUT", "OUTPUT"].iter().all(|chain| {
                run("nsenter", &[&netns, "iptables", "-w", "-S", chain])
                    .is_ok_and(|rules| rules.contains(&format!("-j KUBE-ROUTER-{chain}")))
            }))
        },
    )
}

fn log(layout: &Layout) -> std::path::PathBuf {
    layout.logs().join(format!("{DAEMON}.log"))
}
