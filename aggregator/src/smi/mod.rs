//! The SMI Traffic Metrics API (`metrics.smi-spec.io/v1alpha1`) over HTTPS, served to the API
//! server's aggregation layer through an APIService.

pub mod auth;
pub mod routes;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use inflight_runtime::https;
use inflight_runtime::tls::provider;
use inflight_runtime::{read, write};

use crate::registry::Registry;
use auth::RequestHeader;
use routes::{Answer, Route};

/// The serving certificate and key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    /// A self-signed certificate for `names`, when no `--tls-cert` is given: the APIService then
    /// needs `insecureSkipTLSVerify` or this certificate as its caBundle.
    pub fn self_signed(names: Vec<String>) -> Result<Self, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = rcgen::CertificateParams::new(names)
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

struct Server {
    registry: Arc<Registry>,
    client: Option<Client>,
    requestheader: RwLock<Option<RequestHeader>>,
}

/// TLS that asks for a client certificate of the requestheader CA but lets other callers finish
/// the handshake, so they get a Kubernetes `Status` 401 rather than a TLS alert.
fn acceptor(
    identity: &Identity,
    requestheader: Option<&RequestHeader>,
) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--tls-cert: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| format!("--tls-key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match requestheader {
        Some(rh) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(rh.client_ca_pem.as_bytes()) {
                roots
                    .add(c.map_err(|e| format!("requestheader CA: {e}"))?)
                    .map_err(|e| format!("requestheader CA: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("requestheader CA: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves the API until the process ends, within `limits`. Without a Kubernetes client there is
/// no way to authenticate callers: every request is refused with 503 and the reason.
pub async fn serve(
    listener: TcpListener,
    limits: https::Limits,
    identity: Identity,
    registry: Arc<Registry>,
    client: Option<Client>,
) {
    let server = Arc::new(Server {
        registry,
        client,
        requestheader: RwLock::new(None),
    });
    let current: Arc<RwLock<Option<TlsAcceptor>>> =
        Arc::new(RwLock::new(acceptor(&identity, None).ok()));
    if let Some(client) = server.client.clone() {
        // The CA can rotate: read it again every few minutes, retrying sooner while it fails.
        let (server, current, identity) = (server.clone(), current.clone(), identity.clone());
        tokio::spawn(async move {
            loop {
                let wait = match auth::load(&client)
                    .await
                    .and_then(|rh| Ok((acceptor(&identity, Some(&rh))?, rh)))
                {
                    Ok((tls, rh)) => {
                        *write(&current) = Some(tls);
                        *write(&server.requestheader) = Some(rh);
                        Duration::from_secs(300)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "SMI API: cannot read the requestheader settings; callers are refused until it can");
                        Duration::from_secs(5)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    } else {
        tracing::warn!("SMI API: no Kubernetes API (no in-cluster config, no KUBECONFIG): callers cannot be authenticated and are refused");
    }
    let acceptor = move || read(&current).clone();
    let make = move |tls: &rustls::ServerConnection| {
        let peer_cn = tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| auth::common_name(c));
        let server = server.clone();
        move |request| {
            let (server, peer_cn) = (server.clone(), peer_cn.clone());
            async move { server.handle(request, peer_cn.as_deref()).await }
        }
    };
    https::serve(listener, limits, acceptor, make).await;
}

impl Server {
    async fn handle(
        &self,
        request: Request<Incoming>,
        peer_cn: Option<&str>,
    ) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "only GET is served",
            );
        }
        let Some(client) = &self.client else {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "no Kubernetes API to authenticate callers with",
            );
        };
        let Some(rh) = read(&self.requestheader).clone() else {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the requestheader CA has not been read yet",
            );
        };
        let (user, groups) = match auth::identity(&rh, peer_cn, request.headers()) {
            Ok(id) => id,
            Err(why) => return status(StatusCode::UNAUTHORIZED, "Unauthorized", &why),
        };
        let path = request.uri().path();
        let Some(route) = Route::parse(path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{path} is not served here"),
            );
        };
        if let Some(attrs) = route.attributes() {
            match auth::authorized(client, &user, &groups, attrs).await {
                Ok(true) => {}
                Ok(false) => {
                    let (resource, sub, verb, ns) = (
                        attrs.resource,
                        attrs.subresource,
                        attrs.verb,
                        attrs.namespace,
                    );
                    let what = if sub.is_empty() {
                        resource.to_owned()
                    } else {
                        format!("{resource}/{sub}")
                    };
                    let scope = ns.map_or_else(
                        || "at the cluster scope".to_owned(),
                        |ns| format!("in the namespace {ns:?}"),
                    );
                    return status(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        &format!("{what}.{} is forbidden: User {user:?} cannot {verb} resource {what:?} in API group {:?} {scope}", smi_types::GROUP, smi_types::GROUP),
                    );
                }
                Err(why) => {
                    return status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &why)
                }
            }
        }
        let query = request.uri().query();
        let window = match routes::window(query) {
            Ok(w) => w,
            Err(why) => return status(StatusCode::BAD_REQUEST, "BadRequest", &why),
        };
        let answer = Answer {
            registry: &self.registry,
            window,
            now: SystemTime::now(),
        };
        let body = match route {
            Route::GroupList => smi_types::api_group_list(),
            Route::Group => smi_types::api_group(),
            Route::ResourceList => smi_types::api_resource_list(),
            Route::Get {
                plural,
                namespace,
                name,
            } => match answer.traffic(&plural, namespace.as_deref(), &name) {
                Some(t) => json(&answer.metrics(&plural, namespace.as_deref(), &name, &t)),
                None => return not_found(&plural, &name),
            },
            Route::Edges {
                plural,
                namespace,
                name,
            } => match answer.traffic(&plural, namespace.as_deref(), &name) {
                Some(t) => json(&answer.edges(&plural, namespace.as_deref(), &name, &t)),
                None => return not_found(&plural, &name),
            },
            Route::List { plural, namespace } => {
                let selector = selector(query);
                let only = match &selector {
                    Some(sel) => {
                        match names_matching(client, &plural, namespace.as_deref(), sel).await {
                            Ok(names) => Some(names),
                            Err(why) => return status(StatusCode::BAD_REQUEST, "BadRequest", &why),
                        }
                    }
                    None => None,
                };
                let echoed = selector.as_deref().map(match_labels);
                json(&answer.list(&plural, namespace.as_deref(), only.as_deref(), echoed))
            }
        };
        respond(StatusCode::OK, &body)
    }
}

/// `?labelSelector=`, decoded. Public for the fuzz target (`fuzz/`), like [`routes::window`].
pub fn selector(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.into_owned())
        .filter(|s| !s.is_empty())
}

/// The equality terms of a selector, echoed as `matchLabels` (as the spec's example shows).
pub fn match_labels(selector: &str) -> smi_types::LabelSelector {
    let match_labels = selector
        .split(',')
        .filter_map(|term| {
            term.split_once('=').map(|(k, v)| {
                (
                    k.trim().trim_end_matches('=').to_owned(),
                    v.trim().trim_start_matches('=').to_owned(),
                )
            })
        })
        .filter(|(k, _)| !k.ends_with('!'))
        .collect();
    smi_types::LabelSelector { match_labels }
}

/// Names of the objects of a kind that match a label selector, from the API server: the metrics
/// are not labelled, the objects are.
async fn names_matching(
    client: &Client,
    plural: &str,
    namespace: Option<&str>,
    selector: &str,
) -> Result<Vec<String>, String> {
    let lp = ListParams::default().labels(selector);
    async fn names<K>(api: Api<K>, lp: &ListParams) -> Result<Vec<String>, String>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let list = api
            .list(lp)
            .await
            .map_err(|e| format!("labelSelector: {e}"))?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|o| o.meta().name.clone())
            .collect())
    }
    let c = client.clone();
    match (plural, namespace) {
        ("namespaces", _) => names(Api::<Namespace>::all(c), &lp).await,
        ("pods", Some(ns)) => names(Api::<Pod>::namespaced(c, ns), &lp).await,
        ("pods", None) => names(Api::<Pod>::all(c), &lp).await,
        ("deployments", Some(ns)) => names(Api::<Deployment>::namespaced(c, ns), &lp).await,
        ("deployments", None) => names(Api::<Deployment>::all(c), &lp).await,
        ("statefulsets", Some(ns)) => names(Api::<StatefulSet>::namespaced(c, ns), &lp).await,
        ("statefulsets", None) => names(Api::<StatefulSet>::all(c), &lp).await,
        ("daemonsets", Some(ns)) => names(Api::<DaemonSet>::namespaced(c, ns), &lp).await,
        ("daemonsets", None) => names(Api::<DaemonSet>::all(c), &lp).await,
        _ => Ok(Vec::new()),
    }
}

fn not_found(plural: &str, name: &str) -> Response<Full<Bytes>> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!(
            "{plural}.{} {name:?} not found: it has no pod reporting traffic",
            smi_types::GROUP
        ),
    )
}

fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    respond(code, &smi_types::status(code.as_u16(), reason, message))
}

fn respond(code: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_decoded_and_echoed() {
        assert_eq!(
            selector(Some("t=30s&labelSelector=app%3Dweb%2Ctier%3Dfront")).as_deref(),
            Some("app=web,tier=front")
        );
        assert_eq!(selector(Some("t=30s")), None);
        let echoed = match_labels("app=web,tier==front,x!=y");
        assert_eq!(
            echoed.match_labels.get("app").map(String::as_str),
            Some("web")
        );
        assert_eq!(
            echoed.match_labels.get("tier").map(String::as_str),
            Some("front")
        );
        assert_eq!(echoed.match_labels.len(), 2);
    }
}
