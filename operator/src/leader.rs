//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): every replica runs,
//! one reconciles. A replica that loses the Lease stops, so two never write at once; its pod
//! restarts as a follower.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::config::LeaderFlags;

#[derive(Debug)]
pub struct Election {
    state: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Election {
    /// Joins the election for `flags.lease_name` in `namespace`.
    pub async fn join(
        client: Client,
        namespace: &str,
        flags: &LeaderFlags,
    ) -> anyhow::Result<Self> {
        let identity = flags.identity.clone().unwrap_or_else(|| {
            format!(
                "inflight-operator-{}-{:08x}",
                std::process::id(),
                fastrand::u32(..)
            )
        });
        let secs = flags.lease_duration.as_secs();
        let manager = LeaseManagerBuilder::new(client, &flags.lease_name)
            .with_namespace(namespace)
            .with_identity(&identity)
            .with_duration(secs)
            // Renew a third of the lease early: a slow API server call does not lose it.
            .with_grace((secs / 3).max(1))
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("Lease {namespace}/{}: {e}", flags.lease_name))?;
        tracing::info!(%identity, lease = %flags.lease_name, %namespace, "joined the leader election");
        let (state, task) = manager.watch().await;
        Ok(Self { state, task })
    }

    /// Completes once this replica holds the Lease.
    pub async fn leading(&mut self) -> anyhow::Result<()> {
        self.state
            .wait_for(|leader| *leader)
            .await
            .map(drop)
            .map_err(|_| anyhow::anyhow!("the leader election stopped"))
    }

    /// Completes when this replica no longer holds the Lease.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the Lease up at once, so a follower takes over without waiting for it to lapse.
    pub async fn resign(self, within: Duration) {
        drop(self.state);
        match tokio::time::timeout(within, self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the Lease"),
            Ok(Ok(Err(error))) => {
                tracing::warn!(%error, "could not release the Lease; it lapses by itself")
            }
            _ => tracing::warn!("could not release the Lease in time; it lapses by itself"),
        }
    }
}
