//! inflight-activator: takes the traffic of Services in proxy mode (no ready pod), holds each
//! request, makes the workload wake at once, and forwards the request the moment a pod's proxy
//! answers `/readyz` (design: modes of a Service).
//!
//! Built so far: [`routes`], the Host → workload table, and [`hold`], the bounded queues of held
//! requests. Waking, forwarding, serving and the binary come next (issue 12).

pub mod hold;
pub mod routes;
