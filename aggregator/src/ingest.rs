//! `inflight.v1.Ingest/Report`: the long-lived streams of sidecars and activators. Each stream is
//! authenticated when it opens ([`crate::auth`]) and each report held to its token's pod; the
//! stream ends when its token expires. A report that
//! contradicts itself ends its stream with `INVALID_ARGUMENT` naming the reason, after everything
//! before it was taken; it changes nothing itself. When the aggregator stops, each stream ends with
//! `UNAVAILABLE`: the reporter reconnects, to another replica if there is one.

use std::sync::Arc;

use inflight_proto::v1::ingest_server::Ingest;
use inflight_proto::v1::{ReportRequest, ReportSummary};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Authenticator, Caller, Refusal, ServiceAccount};
use crate::metrics::Metrics;
use crate::now_ms;
use crate::registry::Registry;
use crate::stopping::Stopping;

#[derive(Debug, Clone)]
pub struct IngestService {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub stopping: Stopping,
    /// `None`: `--ingest-auth none`, any stream reports anything.
    pub auth: Option<Arc<Authenticator>>,
    /// Who may report held requests.
    pub activators: Arc<[ServiceAccount]>,
}

impl IngestService {
    fn refuse(&self, refusal: &Refusal) -> Status {
        self.metrics.refused(refusal.reason());
        tracing::warn!(reason = refusal.reason(), %refusal, "report stream refused");
        refusal.status()
    }
}

/// Keeps the connected-streams gauge right however the stream ends.
struct Connected<'a>(&'a Metrics);

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.streams.dec();
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn report(
        &self,
        request: Request<Streaming<ReportRequest>>,
    ) -> Result<Response<ReportSummary>, Status> {
        let caller: Option<Arc<Caller>> = match &self.auth {
            None => None,
            Some(auth) => Some(
                auth.authenticate(request.metadata(), now_ms())
                    .await
                    .map_err(|r| self.refuse(&r))?,
            ),
        };
        // The stream ends with its token; a reporter opens the next one with the rotated token.
        let expiry = caller.as_ref().map(|c| {
            let left = c.expires_unix_ms.saturating_sub(now_ms()).max(0);
            tokio::time::Instant::now()
                + std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0))
        });
        let expired = async move {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let mut stream = request.into_inner();
        self.metrics.streams.inc();
        let _connected = Connected(&self.metrics);
        // The pods this stream claims are released when it ends, however it ends.
        let claims = self.registry.stream();
        let mut accepted = 0u64;
        // One wait for the whole stream, not one per message: each new wait would subscribe to
        // the stop signal again.
        let stopping = self.stopping.wait();
        tokio::pin!(stopping);
        loop {
            let report = tokio::select! {
                // What has arrived is taken before the stream is ended.
                biased;
                message = stream.message() => message?,
                () = &mut stopping => {
                    return Err(Status::unavailable(format!(
                        "the aggregator is shutting down; {accepted} reports of this stream were taken"
                    )));
                }
                () = &mut expired => return Err(self.refuse(&Refusal::Expired)),
            };
            let Some(report) = report else { break };
            if let Some(caller) = &caller {
                auth::check(caller, &report, &self.activators).map_err(|r| self.refuse(&r))?;
            }
            match claims.apply(&report, now_ms()) {
                Ok(()) => {
                    accepted += 1;
                    self.metrics.reports.inc();
                }
                Err(rejection) => {
                    self.metrics.rejected(rejection.reason());
                    tracing::warn!(reason = rejection.reason(), %rejection, "report rejected");
                    let message = format!(
                        "report rejected ({}): {rejection}; {accepted} earlier reports of this stream were taken",
                        rejection.reason()
                    );
                    return Err(if rejection.is_limit() {
                        Status::resource_exhausted(message)
                    } else {
                        Status::invalid_argument(message)
                    });
                }
            }
        }
        Ok(Response::new(ReportSummary { accepted }))
    }
}
