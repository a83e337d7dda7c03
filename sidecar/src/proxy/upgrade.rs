//! An upgraded connection (websocket and the like): once both sides have
//! switched protocols, bytes are copied both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

#[derive(Debug)]
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
}

impl Tunnel {
    pub(super) fn new(client: OnUpgrade, upstream: OnUpgrade) -> Self {
        Self { client, upstream }
    }

    /// Runs until either side closes. Must be spawned: the client's side only
    /// upgrades after the 101 response has been written to it.
    pub async fn run(self) -> std::io::Result<(u64, u64)> {
        let (client, upstream) = tokio::try_join!(
            async { self.client.await.map_err(std::io::Error::other) },
            async { self.upstream.await.map_err(std::io::Error::other) },
        )?;
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    }
}
