//! An upgraded connection (websocket and the like): once both sides have
//! switched protocols, bytes are copied both ways.
//!
//! The tunnel ends when the app has closed its side and everything it sent
//! has reached the client. A client that closes first only half-closes: the
//! app still gets to answer (a websocket close handshake, say).

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

#[derive(Debug)]
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
}

impl Tunnel {
    pub(super) fn new(client: OnUpgrade, upstream: OnUpgrade) -> Self {
        Self { client, upstream }
    }

    /// Runs until the app's side is done; returns the bytes copied to the app
    /// and to the client. Must be spawned: the client's side only upgrades
    /// after the 101 response has been written to it.
    pub async fn run(self) -> std::io::Result<(u64, u64)> {
        let (client, upstream) = tokio::try_join!(
            async { self.client.await.map_err(std::io::Error::other) },
            async { self.upstream.await.map_err(std::io::Error::other) },
        )?;
        let (mut client_read, mut client_write) = tokio::io::split(TokioIo::new(client));
        let (mut app_read, mut app_write) = tokio::io::split(TokioIo::new(upstream));
        let to_app = async {
            let copied = tokio::io::copy(&mut client_read, &mut app_write).await;
            let _ = app_write.shutdown().await;
            copied
        };
        let to_client = async {
            let copied = tokio::io::copy(&mut app_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
            copied
        };
        tokio::pin!(to_app, to_client);
        let mut sent_to_app = None;
        loop {
            tokio::select! {
                copied = &mut to_app, if sent_to_app.is_none() => sent_to_app = Some(copied),
                copied = &mut to_client => {
                    let to_app = match sent_to_app {
                        Some(done) => done?,
                        None => 0,
                    };
                    return Ok((to_app, copied?));
                }
            }
        }
    }
}
