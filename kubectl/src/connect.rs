//! A client for the cluster the kubeconfig names, its default namespace, and the bound on every
//! call made with it.

use std::future::Future;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::Error;

/// A connected client and what the commands need beside it.
#[derive(Clone)]
pub struct Connection {
    pub client: Client,
    /// The kubeconfig context's namespace (`default` when it names none).
    pub default_namespace: String,
    /// The longest one call may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("default_namespace", &self.default_namespace)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Reads the kubeconfig as kube-rs does (`--kubeconfig` first, else `KUBECONFIG`, else
/// `~/.kube/config`, else in-cluster) and makes a client whose connections and reads give up
/// after the request timeout.
pub async fn connect(options: &crate::cli::ClusterArgs) -> Result<Connection, Error> {
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match (&options.kubeconfig, &options.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(file, &kube_options)
                .await
                .map_err(|e| Error::Kubeconfig(e.to_string()))?
        }
        (None, Some(_)) => Config::from_kubeconfig(&kube_options)
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
        (None, None) => Config::infer()
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    config.connect_timeout = Some(options.request_timeout);
    config.read_timeout = Some(options.request_timeout);
    config.write_timeout = Some(options.request_timeout);
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config).map_err(|source| Error::Kube {
        what: "making a client".into(),
        source,
    })?;
    Ok(Connection {
        client,
        default_namespace,
        timeout: options.request_timeout,
    })
}

impl Connection {
    /// `call`, given up after the request timeout; `what` names it in the error.
    pub async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Kube {
                what: what.to_owned(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                what: what.to_owned(),
                after: self.timeout,
            }),
        }
    }

    /// `GET path` of the API server (an aggregated API: the SMI API, KEDA's external metrics), as
    /// `T`, bounded.
    pub async fn get_raw<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Kube {
                what: format!("GET {path}"),
                source: kube::Error::HttpError(e),
            })?;
        self.bounded(&format!("GET {path}"), self.client.request::<T>(request))
            .await
    }
}

/// The API server's status code of a failed call, if it answered with one.
pub fn api_code(error: &Error) -> Option<u16> {
    match error {
        Error::Kube {
            source: kube::Error::Api(status),
            ..
        } => Some(status.code),
        _ => None,
    }
}

/// Why a call failed, in a few words for a view: the API server's message when it gave one.
pub fn reason(error: &Error) -> String {
    match error {
        Error::Kube {
            source: kube::Error::Api(status),
            ..
        } => {
            let message = status.message.trim();
            if message.is_empty() {
                format!("{} ({})", status.reason, status.code)
            } else {
                format!("{message} ({})", status.code)
            }
        }
        other => other.to_string(),
    }
}
