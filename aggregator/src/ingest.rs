//! `inflight.v1.Ingest/Report`: the long-lived streams of sidecars and activators. A report that
//! contradicts itself ends its stream with `INVALID_ARGUMENT` naming the reason, after everything
//! before it was taken; it changes nothing itself. When the aggregator stops, each stream ends with
//! `UNAVAILABLE`: the reporter reconnects, to another replica if there is one.

use std::sync::Arc;

use inflight_proto::v1::ingest_server::Ingest;
use inflight_proto::v1::{ReportRequest, ReportSummary};
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::now_ms;
use crate::registry::Registry;
use crate::stopping::Stopping;

#[derive(Debug, Clone)]
pub struct IngestService {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub stopping: Stopping,
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
            };
            let Some(report) = report else { break };
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
