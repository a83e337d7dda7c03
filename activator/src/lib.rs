//! inflight-activator: takes the traffic of Services in proxy mode (no ready pod), holds each
//! request, makes the workload wake at once, and forwards the request the moment a pod's proxy
//! answers `/readyz` (design: modes of a Service).
//!
//! Built so far: [`routes`], the Host → workload table. Holding, waking, forwarding and the
//! binary come next (issue 12).

pub mod routes;
