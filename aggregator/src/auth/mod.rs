//! Who sends a report stream. Each stream opens with a projected ServiceAccount token; the
//! aggregator has the API server review it ([`review`]), takes the reporter's namespace and pod
//! from the token (never from the reports), finds the pod's workload from the pod itself, and then
//! holds every report of the stream to that identity ([`check`]). Reviews are cached, bounded
//! ([`cache`]).
//!
//! What a refusal says goes to the reporter as the gRPC status and to `/metrics` by reason; a
//! refused stream or report changes no figure.

pub mod cache;
pub mod check;
pub mod claims;
pub mod review;

use std::fmt;

use tonic::Status;

pub use check::check;
pub use review::Authenticator;

/// How report streams are authenticated (`--ingest-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every stream's token is checked with a TokenReview; reports must match the token's pod.
    Tokenreview,
    /// Any stream may report anything: loopback development only.
    None,
}

/// A ServiceAccount, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for ServiceAccount {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (namespace, name) = text
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .ok_or_else(|| format!("{text:?} is not NAMESPACE/NAME of a ServiceAccount"))?;
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Who a stream's token says it is, and what its pod says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub service_account: ServiceAccount,
    /// The pod the token is bound to (its namespace is the ServiceAccount's).
    pub pod: String,
    pub pod_uid: String,
    /// `(kind, name)` from the pod's `inflight.dev/workload` label, as the injector stamped it.
    pub workload: Option<(String, String)>,
    /// When the token expires (Unix ms): the stream ends then, to be opened with the next one.
    pub expires_unix_ms: i64,
}

impl Caller {
    pub fn namespace(&self) -> &str {
        &self.service_account.namespace
    }
}

/// Why a stream or a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no token: send the pod's projected ServiceAccount token (audience {audience}) as \
         `authorization: Bearer <token>`"
    )]
    NoToken { audience: String },
    #[error("the authorization metadata is not `Bearer <token>`")]
    Malformed,
    #[error("the token was not accepted for audience {audience}: {why}")]
    Invalid { audience: String, why: String },
    #[error(
        "the token of {service_account} is not bound to a pod: only a pod's projected token \
         says which pod reports"
    )]
    NotPodBound { service_account: String },
    #[error("pod {namespace}/{pod} of the token is gone (or is another pod of that name now)")]
    PodGone { namespace: String, pod: String },
    #[error("the stream's token expired; open a new stream with the rotated token")]
    Expired,
    #[error("the token is pod {token_pod}'s; the report names pod {reported}")]
    OtherPod { token_pod: String, reported: String },
    #[error(
        "pod {pod} belongs to workload {labelled} (its inflight.dev/workload label); the report \
         names {reported}"
    )]
    OtherWorkload {
        pod: String,
        labelled: String,
        reported: String,
    },
    #[error("only the activators' ServiceAccounts ({allowed}) may report held requests, not {service_account}")]
    NotActivator {
        service_account: String,
        allowed: String,
    },
    #[error("the token could not be reviewed now: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// The label of `inflight_aggregator_ingest_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoToken { .. } => "no_token",
            Self::Malformed => "malformed",
            Self::Invalid { .. } => "invalid_token",
            Self::NotPodBound { .. } => "not_pod_bound",
            Self::PodGone { .. } => "pod_gone",
            Self::Expired => "expired",
            Self::OtherPod { .. } => "other_pod",
            Self::OtherWorkload { .. } => "other_workload",
            Self::NotActivator { .. } => "not_activator",
            Self::Unavailable(_) => "review_unavailable",
        }
    }

    pub fn status(&self) -> Status {
        let message = format!("report stream refused ({}): {self}", self.reason());
        match self {
            Self::NoToken { .. }
            | Self::Malformed
            | Self::Invalid { .. }
            | Self::NotPodBound { .. }
            | Self::PodGone { .. }
            | Self::Expired => Status::unauthenticated(message),
            Self::OtherPod { .. } | Self::OtherWorkload { .. } | Self::NotActivator { .. } => {
                Status::permission_denied(message)
            }
            Self::Unavailable(_) => Status::unavailable(message),
        }
    }
}
