//! The SMI Traffic Metrics API (`metrics.smi-spec.io/v1alpha1`) over HTTPS, served to the API
//! server's aggregation layer through an APIService.

pub mod access;
pub mod auth;
pub mod routes;
pub mod trust;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::Client;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use inflight_runtime::https;
use inflight_runtime::read;

use crate::registry::Registry;
use access::Access;
use auth::{Caller, Source};
use routes::{Answer, Attributes, Named, Route};
use trust::{Current, Peer};

/// The serving certificate: `--tls-cert`/`--tls-key`, read again as they are renewed, or one made
/// at start.
#[derive(Debug, Clone)]
pub struct Identity(Arc<dyn rustls::server::ResolvesServerCert>);

impl Identity {
    /// The certificate of these files, as they are now.
    pub fn files(files: Arc<inflight_runtime::tls::CertFiles>) -> Self {
        Self(files)
    }

    /// A self-signed certificate for `names`, when no `--tls-cert` is given: the APIService then
    /// needs `insecureSkipTLSVerify` or this certificate as its caBundle.
    pub fn self_signed(names: Vec<String>) -> Result<Self, String> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = rcgen::CertificateParams::new(names)
            .and_then(|p| p.self_signed(&key))
            .map_err(|e| e.to_string())?;
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = rustls::sign::CertifiedKey::from_der(
            vec![CertificateDer::from(cert.der().to_vec())],
            private,
            &inflight_runtime::tls::provider(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self(Arc::new(rustls::sign::SingleCertAndKey::from(
            certified,
        ))))
    }

    pub fn resolver(&self) -> Arc<dyn rustls::server::ResolvesServerCert> {
        self.0.clone()
    }
}

type Labels = Vec<(&'static str, &'static str)>;

/// What the SMI API measures of its callers (prefix `inflight_aggregator_smi_`).
#[derive(Debug, Default)]
pub struct Figures {
    refused: Family<Labels, Counter>,
    reviews: Family<Labels, Counter>,
    reviews_cached: Counter,
}

impl Figures {
    pub fn register(&self, p: &mut prometheus_client::registry::Registry) {
        p.register(
            "smi_requests_refused",
            "SMI API requests refused, by reason: unauthenticated (401), forbidden (403: the SMI resource), forbidden_list (403: listing the objects an answer names), unavailable (503: no Kubernetes API or no answer from it)",
            self.refused.clone(),
        );
        p.register(
            "smi_access_reviews",
            "SubjectAccessReviews sent for SMI API callers, by answer (allowed, denied, error)",
            self.reviews.clone(),
        );
        p.register(
            "smi_access_reviews_cached",
            "SMI API authorization questions answered from the cache, without a SubjectAccessReview",
            self.reviews_cached.clone(),
        );
    }

    fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }

    fn review(&self, answer: &'static str) {
        self.reviews.get_or_create(&vec![("answer", answer)]).inc();
    }

    fn review_cached(&self) {
        self.reviews_cached.inc();
    }
}

/// How the SMI API runs.
pub struct Settings {
    pub limits: https::Limits,
    pub identity: Identity,
    /// Where the requestheader CA comes from; none: callers cannot be authenticated, and the
    /// port never listens.
    pub source: Option<Source>,
    /// For SubjectAccessReviews and label selectors; none: every request past authentication
    /// that needs authorization gets 503.
    pub client: Option<Client>,
    pub figures: Arc<Figures>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("limits", &self.limits)
            .field("source", &self.source)
            .field("kubernetes", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// A refusal: its code, its `Status` reason and details, what it says, and what it is counted
/// as in the figures.
struct Refusal {
    code: StatusCode,
    reason: &'static str,
    message: String,
    counted: Option<&'static str>,
    details: Option<serde_json::Value>,
}

impl Refusal {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            counted: None,
            details: None,
        }
    }

    fn counted(mut self, as_: &'static str) -> Self {
        self.counted = Some(as_);
        self
    }
}

struct Server {
    registry: Arc<Registry>,
    client: Option<Client>,
    access: Option<Access>,
    current: Current,
    figures: Arc<Figures>,
}

/// Serves the API until the process ends, within `settings.limits`. `socket` is bound, not yet
/// listening: it listens once the requestheader CA has been read, so no connection is ever
/// accepted without the client-certificate check (until then a caller's connection is refused,
/// and the APIService shows unavailable). `ready` says which.
pub async fn serve(
    socket: TcpSocket,
    settings: Settings,
    registry: Arc<Registry>,
    ready: watch::Sender<Result<(), String>>,
) {
    let Some(source) = settings.source else {
        let why = "no Kubernetes API (no in-cluster config, no KUBECONFIG) and no --requestheader-client-ca-file: callers cannot be authenticated, so the SMI port does not listen";
        tracing::warn!("SMI API: {why}");
        ready.send_modify(|r| *r = Err(why.into()));
        return;
    };
    let current: Current = Arc::new(RwLock::new(None));
    let mut loaded = ready.subscribe();
    tokio::spawn(trust::keep_current(
        source,
        settings.identity,
        current.clone(),
        ready,
    ));
    if loaded.wait_for(Result::is_ok).await.is_err() {
        return;
    }
    let listener = match socket.listen(1024) {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, "SMI API: cannot listen");
            return;
        }
    };
    let server = Arc::new(Server {
        registry,
        access: settings.client.clone().map(Access::new),
        client: settings.client,
        current: current.clone(),
        figures: settings.figures,
    });
    let acceptor = move || read(&current).as_ref().map(|t| t.acceptor.clone());
    let make = move |tls: &rustls::ServerConnection| {
        let peer = Arc::new(Peer::new(tls));
        let server = server.clone();
        move |request| {
            let (server, peer) = (server.clone(), peer.clone());
            async move { server.handle(request, &peer).await }
        }
    };
    https::serve(listener, settings.limits, acceptor, make).await;
}

impl Server {
    async fn handle(&self, request: Request<Incoming>, peer: &Peer) -> Response<Full<Bytes>> {
        match self.answer(&request, peer).await {
            Ok(body) => respond(StatusCode::OK, &body),
            Err(refusal) => {
                if let Some(reason) = refusal.counted {
                    self.figures.refused(reason);
                }
                let mut body =
                    smi_types::status(refusal.code.as_u16(), refusal.reason, &refusal.message);
                if let (Some(details), Some(map)) = (refusal.details, body.as_object_mut()) {
                    map.insert("details".into(), details);
                }
                respond(refusal.code, &body)
            }
        }
    }

    async fn answer(
        &self,
        request: &Request<Incoming>,
        peer: &Peer,
    ) -> Result<serde_json::Value, Refusal> {
        if request.method() != Method::GET {
            return Err(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "only GET is served",
            ));
        }
        // Accepting began once the CA was read, and it is never unset after.
        let Some(trust) = read(&self.current).clone() else {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the requestheader CA has not been read yet",
            ));
        };
        let caller = auth::identity(
            &trust.requestheader,
            peer.common_name(&trust),
            request.headers(),
        )
        .map_err(|why| {
            Refusal::new(StatusCode::UNAUTHORIZED, "Unauthorized", why).counted("unauthenticated")
        })?;
        let path = request.uri().path();
        let route = Route::parse(path).ok_or_else(|| {
            Refusal::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} is not served here"),
            )
        })?;
        let query = request.uri().query();
        let selector = selector(query);
        if let Some(smi) = route.attributes() {
            self.authorize(&caller, smi, "forbidden", "").await?;
            if let Some(objects) = route.objects(selector.as_deref()) {
                let why = if selector.is_some() {
                    format!(
                        ": labelSelector is matched against the {} themselves",
                        objects.resource
                    )
                } else {
                    format!(
                        ": a list of {}.{} names them",
                        objects.resource,
                        smi_types::GROUP
                    )
                };
                self.authorize(&caller, objects, "forbidden_list", &why)
                    .await?;
            }
        }
        let window = routes::window(query)
            .map_err(|why| Refusal::new(StatusCode::BAD_REQUEST, "BadRequest", why))?;
        let answer = Answer {
            registry: &self.registry,
            window,
            now: SystemTime::now(),
        };
        Ok(match route {
            Route::GroupList => smi_types::api_group_list(),
            Route::Group => smi_types::api_group(),
            Route::ResourceList => smi_types::api_resource_list(),
            Route::Get {
                plural,
                namespace,
                name,
            } => match answer.traffic(&plural, namespace.as_deref(), &name) {
                Some(t) => json(&answer.metrics(&plural, namespace.as_deref(), &name, &t)),
                None => return Err(not_found(&plural, &name)),
            },
            Route::Edges {
                plural,
                namespace,
                name,
            } => match answer.traffic(&plural, namespace.as_deref(), &name) {
                Some(t) => json(&answer.edges(&plural, namespace.as_deref(), &name, &t)),
                None => return Err(not_found(&plural, &name)),
            },
            Route::List { plural, namespace } => {
                let only = match &selector {
                    Some(sel) => {
                        let reporting: HashSet<Named> = answer
                            .names(&plural, namespace.as_deref())
                            .into_iter()
                            .collect();
                        let client = self.client.as_ref().ok_or_else(no_kubernetes)?;
                        Some(
                            names_matching(client, &plural, namespace.as_deref(), sel, &reporting)
                                .await?,
                        )
                    }
                    None => None,
                };
                let echoed = selector.as_deref().map(match_labels);
                json(&answer.list(&plural, namespace.as_deref(), only.as_ref(), echoed))
            }
        })
    }

    /// Asks whether `caller` may do `what`; `counted` names a refusal in the figures, and `why`
    /// follows the API server's wording of it.
    async fn authorize(
        &self,
        caller: &Caller,
        what: Attributes<'_>,
        counted: &'static str,
        why: &str,
    ) -> Result<(), Refusal> {
        let access = self.access.as_ref().ok_or_else(no_kubernetes)?;
        match access.allowed(caller, what, &self.figures).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal {
                details: Some(serde_json::json!({"group": what.group, "kind": what.resource})),
                ..Refusal::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!("{}{why}", what.forbidden(&caller.user)),
                )
                .counted(counted)
            }),
            Err(why) => {
                Err(
                    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", why)
                        .counted("unavailable"),
                )
            }
        }
    }
}

fn no_kubernetes() -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        "no Kubernetes API to authorize callers with",
    )
    .counted("unavailable")
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

/// Of the objects that report (`reporting`), those a label selector matches, from the API
/// server: the metrics are not labelled, the objects are. Read a page at a time, keeping only
/// what reports, so a large cluster costs a page of memory, not a list of every object.
async fn names_matching(
    client: &Client,
    plural: &str,
    namespace: Option<&str>,
    selector: &str,
    reporting: &HashSet<Named>,
) -> Result<HashSet<Named>, Refusal> {
    let c = client.clone();
    let (s, r) = (selector, reporting);
    match (plural, namespace) {
        ("namespaces", _) => matching(Api::<Namespace>::all(c), s, r, false).await,
        ("pods", Some(ns)) => matching(Api::<Pod>::namespaced(c, ns), s, r, true).await,
        ("pods", None) => matching(Api::<Pod>::all(c), s, r, true).await,
        ("deployments", Some(ns)) => {
            matching(Api::<Deployment>::namespaced(c, ns), s, r, true).await
        }
        ("deployments", None) => matching(Api::<Deployment>::all(c), s, r, true).await,
        ("statefulsets", Some(ns)) => {
            matching(Api::<StatefulSet>::namespaced(c, ns), s, r, true).await
        }
        ("statefulsets", None) => matching(Api::<StatefulSet>::all(c), s, r, true).await,
        ("daemonsets", Some(ns)) => matching(Api::<DaemonSet>::namespaced(c, ns), s, r, true).await,
        ("daemonsets", None) => matching(Api::<DaemonSet>::all(c), s, r, true).await,
        _ => Ok(HashSet::new()),
    }
}

/// Objects per page of a label-selector list.
const PAGE: u32 = 500;

/// A page the API server does not send within this is an error (503), not a hang.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

async fn matching<K>(
    api: Api<K>,
    selector: &str,
    reporting: &HashSet<Named>,
    namespaced: bool,
) -> Result<HashSet<Named>, Refusal>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut found = HashSet::new();
    let mut next: Option<String> = None;
    loop {
        let mut lp = ListParams::default().labels(selector).limit(PAGE);
        if let Some(token) = &next {
            lp = lp.continue_token(token);
        }
        let page = tokio::time::timeout(LIST_TIMEOUT, api.list_metadata(&lp))
            .await
            .map_err(|_| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("labelSelector: no answer from the API server within {LIST_TIMEOUT:?}"),
                )
                .counted("unavailable")
            })?
            .map_err(|e| match e {
                // The API server's word on the selector itself.
                kube::Error::Api(status) if status.code == 400 => Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("labelSelector: {}", status.message),
                ),
                e => Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!("labelSelector: {e}"),
                )
                .counted("unavailable"),
            })?;
        for object in page.items {
            let Some(name) = object.metadata.name else {
                continue;
            };
            let named = (object.metadata.namespace.filter(|_| namespaced), name);
            if reporting.contains(&named) {
                found.insert(named);
            }
        }
        next = page.metadata.continue_.filter(|t| !t.is_empty());
        if next.is_none() {
            return Ok(found);
        }
    }
}

fn not_found(plural: &str, name: &str) -> Refusal {
    Refusal::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "{plural}.{} {name:?} not found: it has no pod reporting traffic",
            smi_types::GROUP
        ),
    )
}

fn json(value: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
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
