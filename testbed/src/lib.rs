//! A real one-node Kubernetes cluster with real KEDA on one machine, built from Go modules and
//! Debian packages: the ground every end-to-end test and the local demo stand on.
//!
//! - [`components`]: the third-party binaries, built once and cached by version;
//! - [`images`]: OCI images `FROM scratch` (buildah) imported into the bed's containerd;
//! - [`cluster`]: `up`, `down`, `status` of a named bed (processes in a network namespace of their
//!   own, so beds run side by side and `down` leaves nothing behind);
//! - [`network_policy`]: NetworkPolicies enforced (kube-router's firewall) on beds whose tests ask;
//! - [`TestBed`]: the API for tests: one shared cluster per run, a namespace per test.

use std::path::{Path, PathBuf};

pub mod api;
mod cgroups;
pub mod chart;
pub mod cluster;
pub mod cold_start;
pub mod components;
pub mod configs;
mod daemons;
pub mod dns;
pub mod images;
mod keda;
pub mod layout;
pub mod manifests;
mod mounts;
pub mod network;
pub mod network_policy;
pub mod pki;
pub mod process;
pub mod query;
mod testbed;
pub mod traffic;

pub use api::{client, kubectl_run};
pub use cluster::{down, status, up, UpOptions};
pub use layout::Layout;
pub use testbed::{eventually, TestBed, POD_SECURITY_RESTRICTED};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("{what} exited at once; last lines of {log}:\n{tail}", log = log.display())]
    Died {
        what: String,
        log: PathBuf,
        tail: String,
    },
    #[error("timed out after {seconds}s waiting for {what}{details}")]
    Timeout {
        what: String,
        seconds: u64,
        details: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}
