//! `reconcile` and `error_policy` for HTTPAutoscalers, kube-runtime's controller-rs way: a
//! finalizer hands `Apply` and `Cleanup` over, status goes through server-side apply, and what a
//! user wants to see happen is published as Events.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use inflight_api::{HttpAutoscaler, HttpAutoscalerStatus, Mode, TargetKind};
use inflight_proto::names::{ACTIVATOR_PORT, PROXY_ADMIN_PORT, PROXY_PORT};
use inflight_runtime::probe;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as Finalize};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use crate::aggregator::Aggregator;
use crate::endpoints::{self, Desired};
use crate::keda::{self, ScaledObject};
use crate::metrics::Metrics;
use crate::services::{self, Ownership};
use crate::status::{self, Check};

/// Holds the HTTPAutoscaler until its Service is given back and its workload is not left at zero.
pub const FINALIZER: &str = "inflight.dev/operator";
pub const FIELD_MANAGER: &str = "inflight-operator";

/// What every reconcile needs.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub aggregator: Aggregator,
    pub settings: Settings,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub aggregator_address: String,
    /// The ClusterTriggerAuthentication of KEDA's client certificate, if the scaler port asks
    /// for one.
    pub trigger_authentication: Option<String>,
    pub activator_service: (String, String),
    pub readyz_timeout: Duration,
    pub resync: Duration,
    /// How often the status of a workload with requests in flight is refreshed.
    pub busy_status: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Cleanup waits for something Kubernetes does; not a failure.
    #[error("waiting: {0}")]
    Waiting(String),
    #[error("HTTPAutoscaler has no {0}")]
    Incomplete(&'static str),
}

impl Error {
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.kind(),
                _ => "finalizer",
            },
            Error::Waiting(_) => "waiting",
            Error::Incomplete(_) => "invalid",
        }
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub async fn reconcile(hta: Arc<HttpAutoscaler>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.in_progress.inc();
    let started = Instant::now();
    let ns = hta.namespace().ok_or(Error::Incomplete("namespace"))?;
    let api: Api<HttpAutoscaler> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, hta, |event| async {
        match event {
            Finalize::Apply(hta) => apply(&hta, &ctx).await,
            Finalize::Cleanup(hta) => cleanup(&hta, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.in_progress.dec();
    ctx.metrics.finished(
        result.as_ref().map_or_else(Error::kind, |_| "ok"),
        started.elapsed(),
    );
    result
}

pub fn error_policy(hta: Arc<HttpAutoscaler>, error: &Error, _ctx: Arc<Context>) -> Action {
    if error.kind() == "waiting" {
        tracing::debug!(name = %hta.name_any(), %error, "reconcile waits");
        return Action::requeue(Duration::from_secs(1));
    }
    tracing::warn!(name = %hta.name_any(), namespace = ?hta.namespace(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// The workload as the operator needs it.
struct Target {
    replicas: i32,
    ready: i32,
    selector: Result<BTreeMap<String, String>, String>,
}

fn selector_labels(s: &LabelSelector) -> Result<BTreeMap<String, String>, String> {
    if s.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(
            "its selector uses matchExpressions, which a Service selector cannot say".into(),
        );
    }
    s.match_labels
        .clone()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| "its selector has no matchLabels".to_owned())
}

async fn target(
    client: &Client,
    ns: &str,
    hta: &HttpAutoscaler,
) -> Result<Option<Target>, kube::Error> {
    let name = &hta.spec.scale_target_ref.name;
    Ok(match hta.spec.scale_target_ref.kind {
        TargetKind::Deployment => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|d| {
                let spec = d.spec.as_ref();
                let ready = d.status.as_ref().and_then(|s| s.ready_replicas);
                Target::new(
                    spec.and_then(|s| s.replicas),
                    ready,
                    spec.map(|s| &s.selector),
                )
            }),
        TargetKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|d| {
                let spec = d.spec.as_ref();
                let ready = d.status.as_ref().and_then(|s| s.ready_replicas);
                Target::new(
                    spec.and_then(|s| s.replicas),
                    ready,
                    spec.map(|s| &s.selector),
                )
            }),
    })
}

impl Target {
    fn new(replicas: Option<i32>, ready: Option<i32>, selector: Option<&LabelSelector>) -> Self {
        Self {
            // The API server defaults an unset replicas to 1.
            replicas: replicas.unwrap_or(1),
            ready: ready.unwrap_or(0),
            selector: selector.map_or(Err("it has no spec".into()), selector_labels),
        }
    }
}

/// Sets the target's replicas through its `scale` subresource.
async fn scale(
    client: &Client,
    ns: &str,
    hta: &HttpAutoscaler,
    replicas: i32,
) -> Result<(), kube::Error> {
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    let name = &hta.spec.scale_target_ref.name;
    let params = PatchParams::default();
    match hta.spec.scale_target_ref.kind {
        TargetKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), ns)
                .patch_scale(name, &params, &patch)
                .await?
        }
        TargetKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), ns)
                .patch_scale(name, &params, &patch)
                .await?
        }
    };
    Ok(())
}

fn kind_name(hta: &HttpAutoscaler) -> String {
    format!(
        "{:?} {}",
        hta.spec.scale_target_ref.kind, hta.spec.scale_target_ref.name
    )
}

async fn publish(
    ctx: &Context,
    hta: &HttpAutoscaler,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &hta.object_ref(&())).await {
        tracing::warn!(%error, %reason, "cannot publish Event");
    }
}

/// A warning Event when `check` fails for a reason other than last time's: a lasting fault is
/// reported once, not every resync.
async fn warn_on_change(ctx: &Context, hta: &HttpAutoscaler, type_: &str, check: &Check) {
    if let Check::Failed(reason, message) = check {
        if status::previous_reason(hta, type_) != Some(*reason) {
            publish(ctx, hta, EventType::Warning, reason, message.clone()).await;
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply(hta: &HttpAutoscaler, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = hta.namespace().ok_or(Error::Incomplete("namespace"))?;
    let name = hta.name_any();
    let uid = hta.uid().ok_or(Error::Incomplete("uid"))?;
    let owner = hta
        .controller_owner_ref(&())
        .ok_or(Error::Incomplete("name or uid"))?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());

    // The ScaledObject first: KEDA can work while the target is being created.
    let scaled = match keda::spec_for(
        hta,
        &ctx.settings.aggregator_address,
        ctx.settings.trigger_authentication.as_deref(),
    ) {
        Err(message) => Check::failed("InvalidSpec", message),
        Ok(spec) => scaled_object(client, &ns, &name, &uid, owner.clone(), spec).await?,
    };
    let target = target(client, &ns, hta).await?;
    let found = match &target {
        None => Check::failed(
            "TargetNotFound",
            format!("{} not found in namespace {ns}", kind_name(hta)),
        ),
        Some(Target {
            selector: Err(why), ..
        }) => Check::failed("InvalidTarget", format!("{}: {why}", kind_name(hta))),
        Some(_) => Check::Ok("Found", kind_name(hta)),
    };
    warn_on_change(ctx, hta, status::SCALED_OBJECT_READY, &scaled).await;
    warn_on_change(ctx, hta, status::TARGET_FOUND, &found).await;

    let mut routed: Result<Desired, Check> = Err(Check::failed(
        "TargetNotFound",
        "the Service is left as it is until the target exists",
    ));
    if let Some(Target {
        selector: Ok(selector),
        ..
    }) = &target
    {
        routed = route(hta, ctx, &ns, owner, selector.clone()).await?;
    }
    let routing = routing_check(hta, ctx, &routed);
    if found.ok() {
        warn_on_change(ctx, hta, status::READY, &routing).await;
    }

    let previous = hta.status.clone().unwrap_or_default();
    let (replicas, ready_replicas) = target.as_ref().map_or((0, 0), |t| (t.replicas, t.ready));
    let mode = routed.as_ref().ok().map(|d| d.mode);
    let last_activation =
        announce(ctx, hta, &routed, target.as_ref().map(|t| t.replicas), &now).await;
    let in_flight = ctx
        .aggregator
        .in_flight(hta)
        .await
        .unwrap_or(previous.in_flight);

    // Ready is the first of the others that is not, with its reason.
    let ready = [&found, &scaled, &routing]
        .into_iter()
        .find(|c| !c.ok())
        .unwrap_or(&routing)
        .clone();
    let generation = hta.metadata.generation;
    let old = hta.status.as_ref();
    let status = HttpAutoscalerStatus {
        conditions: vec![
            status::condition(old, status::READY, &ready, generation, &now),
            status::condition(old, status::SCALED_OBJECT_READY, &scaled, generation, &now),
            status::condition(old, status::TARGET_FOUND, &found, generation, &now),
        ],
        mode: mode.or(previous.mode),
        replicas,
        ready_replicas,
        in_flight,
        last_activation_time: last_activation,
        observed_generation: generation,
    };
    if hta.status.as_ref() != Some(&status) {
        let api: Api<HttpAutoscaler> = Api::namespaced(client.clone(), &ns);
        let patch = json!({
            "apiVersion": "inflight.dev/v1alpha1",
            "kind": "HTTPAutoscaler",
            "status": status,
        });
        api.patch_status(&name, &apply_params(), &Patch::Apply(&patch))
            .await?;
    }

    Ok(match (&target, &routed) {
        (None, _) => Action::requeue(Duration::from_secs(10)),
        (_, Ok(d)) if d.waiting > 0 => Action::requeue(Duration::from_secs(1)),
        _ if !scaled.ok() => Action::requeue(Duration::from_secs(5)),
        _ if in_flight > 0.0 => Action::requeue(ctx.settings.busy_status.min(ctx.settings.resync)),
        _ => Action::requeue(ctx.settings.resync),
    })
}

/// What the Service's routing says for `Ready`.
fn routing_check(hta: &HttpAutoscaler, ctx: &Context, routed: &Result<Desired, Check>) -> Check {
    match routed {
        Err(check) => check.clone(),
        Ok(d) if d.mode == Mode::Proxy && d.proxy.is_empty() => {
            let (act_ns, act_name) = &ctx.settings.activator_service;
            Check::failed(
                "NoActivator",
                format!(
                    "no pod is ready and Service {act_ns}/{act_name} has no ready activator: requests to {} fail until one is",
                    hta.spec.service.name
                ),
            )
        }
        Ok(d) => Check::Ok(
            "Ready",
            match d.mode {
                Mode::Serve => format!("serving through {} pod(s)", d.ready_pods),
                Mode::Proxy => format!(
                    "{} activator pod(s) take the traffic until a pod is ready",
                    d.proxy.len()
                ),
            },
        ),
    }
}

/// Events for what changed since the last status: a mode switch, a wake-up, a scale to zero.
/// Returns the last activation time, now if the workload just left zero.
async fn announce(
    ctx: &Context,
    hta: &HttpAutoscaler,
    routed: &Result<Desired, Check>,
    replicas: Option<i32>,
    now: &Time,
) -> Option<Time> {
    let previous = hta.status.clone().unwrap_or_default();
    let svc = &hta.spec.service.name;
    if let Ok(d) = routed {
        if previous.mode != Some(d.mode) {
            ctx.metrics.switched(d.mode);
            let note = match d.mode {
                Mode::Serve => format!("Service {svc} now sends to {} ready pod(s)", d.ready_pods),
                Mode::Proxy => format!(
                    "no pod of {} is ready: Service {svc} now sends to the activator",
                    kind_name(hta)
                ),
            };
            let reason = format!("{:?}Mode", d.mode);
            publish(ctx, hta, EventType::Normal, &reason, note).await;
        }
    }
    // Only against a status this operator wrote: a first reconcile is no transition.
    let (Some(_), Some(replicas)) = (&hta.status, replicas) else {
        return previous.last_activation_time;
    };
    if previous.replicas == 0 && replicas > 0 {
        let note = format!("{} scaled from zero to {replicas}", kind_name(hta));
        publish(ctx, hta, EventType::Normal, "WakingUp", note).await;
        return Some(now.clone());
    }
    if previous.replicas > 0 && replicas == 0 {
        let note = format!("{} scaled to zero", kind_name(hta));
        publish(ctx, hta, EventType::Normal, "ScaledToZero", note).await;
    }
    previous.last_activation_time
}

/// Applies the ScaledObject unless one of that name is not ours, and reads KEDA's verdict.
async fn scaled_object(
    client: &Client,
    ns: &str,
    name: &str,
    uid: &str,
    owner: OwnerReference,
    spec: keda::ScaledObjectSpec,
) -> Result<Check, Error> {
    let api: Api<ScaledObject> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await {
        Err(e) if not_found(&e) => {
            return Ok(Check::failed(
                "KEDANotInstalled",
                "the API server does not know scaledobjects.keda.sh: install KEDA (2.17 or later)",
            ))
        }
        Err(e) => return Err(e.into()),
        Ok(Some(existing))
            if !existing.owner_references().iter().any(|o| o.uid == uid) =>
        {
            return Ok(Check::failed(
                "ScaledObjectConflict",
                format!("ScaledObject {name} exists and is not this HTTPAutoscaler's: delete it or rename the HTTPAutoscaler"),
            ))
        }
        Ok(_) => {}
    }
    let mut so = ScaledObject::new(name, spec);
    so.metadata.owner_references = Some(vec![owner]);
    let patch = json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "ownerReferences": so.metadata.owner_references},
        "spec": so.spec,
    });
    let applied = match api
        .patch(name, &apply_params(), &Patch::Apply(&patch))
        .await
    {
        // KEDA's admission webhook refuses a ScaledObject it cannot use, with the reason.
        Err(kube::Error::Api(s))
            if s.code == 400
                || s.code == 403
                    && s.reason == "Forbidden"
                    && s.message.contains("admission webhook")
                || s.code == 422 =>
        {
            return Ok(Check::failed("ScaledObjectRejected", s.message))
        }
        other => other?,
    };
    Ok(match applied.ready() {
        Some((true, _)) => Check::Ok("Ready", format!("ScaledObject {name} is ready")),
        Some((false, why)) => Check::failed(
            "ScaledObjectNotReady",
            format!("ScaledObject {name}: {why}"),
        ),
        None => Check::Pending(
            "ScaledObjectPending",
            format!("KEDA has not checked ScaledObject {name} yet"),
        ),
    })
}

/// Makes the Services and the EndpointSlices right; `Err(check)` says why it could not.
async fn route(
    hta: &HttpAutoscaler,
    ctx: &Context,
    ns: &str,
    owner: OwnerReference,
    selector: BTreeMap<String, String>,
) -> Result<Result<Desired, Check>, Error> {
    let client = &ctx.client;
    let name = hta.name_any();
    let uid = hta.uid().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let private = services::private(hta, owner.clone(), selector);
    services
        .patch(
            &hta.pods_service(),
            &apply_params(),
            &Patch::Apply(&private),
        )
        .await?;

    let svc_name = &hta.spec.service.name;
    let public = match services.get_opt(svc_name).await? {
        None => {
            let svc = services::public(hta, owner.clone());
            services
                .patch(svc_name, &apply_params(), &Patch::Apply(&svc))
                .await?
        }
        Some(existing) => match services::ownership(&existing, hta, &uid) {
            Ownership::Ours => {
                let svc = services::public(hta, owner.clone());
                services
                    .patch(svc_name, &apply_params(), &Patch::Apply(&svc))
                    .await?
            }
            Ownership::Adopted => existing,
            Ownership::ToAdopt(patch) => {
                let adopted = services
                    .patch(svc_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                forget_kubernetes_endpoints(client, ns, svc_name).await?;
                publish(ctx, hta, EventType::Normal, "AdoptedService", format!(
                    "Service {svc_name}'s selector is kept in its annotation {} and given back when this HTTPAutoscaler is deleted",
                    inflight_api::ADOPTED_SELECTOR_ANNOTATION
                )).await;
                adopted
            }
            Ownership::Taken(other) => {
                return Ok(Err(Check::failed(
                    "ServiceTaken",
                    format!("Service {svc_name} is already managed by HTTPAutoscaler {other}"),
                )))
            }
        },
    };
    let port_name = match services::port_name(&public, hta.spec.service.port) {
        Ok(p) => p,
        Err(message) => return Ok(Err(Check::failed("InvalidService", message))),
    };

    let pods = endpoints::addresses(
        &slices
            .list(&ListParams::default().labels(&format!(
                "kubernetes.io/service-name={}",
                hta.pods_service()
            )))
            .await?
            .items,
    );
    let (act_ns, act_name) = &ctx.settings.activator_service;
    let activator_slices = Api::<EndpointSlice>::namespaced(client.clone(), act_ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={act_name}")))
        .await?
        .items;
    let activators = endpoints::addresses(&activator_slices);
    let ready: Vec<String> = pods
        .iter()
        .filter(|p| p.ready)
        .map(|p| p.ip.clone())
        .collect();
    let answered = answering(ready, ctx.settings.readyz_timeout).await;
    let desired = endpoints::decide(&pods, &answered, &activators);
    let serve = endpoints::slice(
        hta,
        owner.clone(),
        Mode::Serve,
        port_name.clone(),
        i32::from(PROXY_PORT),
        desired.serve.clone(),
    );
    let proxy = endpoints::slice(
        hta,
        owner,
        Mode::Proxy,
        port_name,
        endpoints::activator_port(&activator_slices).unwrap_or(i32::from(ACTIVATOR_PORT)),
        desired.proxy.clone(),
    );
    // The side that gains endpoints first: never a moment with neither.
    let order = match desired.mode {
        Mode::Serve => [serve, proxy],
        Mode::Proxy => [proxy, serve],
    };
    for slice in order {
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        slices
            .patch(&slice_name, &apply_params(), &Patch::Apply(&slice))
            .await?;
    }
    tracing::debug!(%name, mode = ?desired.mode, serve = desired.serve.len(), proxy = desired.proxy.len(), waiting = desired.waiting, "endpoints");
    Ok(Ok(desired))
}

/// Once a Service has no selector, Kubernetes stops keeping its endpoints but leaves them: the
/// EndpointSlice controller's slices stay, and the legacy Endpoints object, which the mirroring
/// controller then copies into a slice of its own. Either would send traffic straight to the
/// app's port beside the operator's slices, bypassing the pods' proxies. Only what Kubernetes'
/// controllers made is deleted; once the selector is given back, they make it again.
async fn forget_kubernetes_endpoints(client: &Client, ns: &str, svc: &str) -> Result<(), Error> {
    #[allow(deprecated)]
    let legacy: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), ns);
    #[allow(deprecated)]
    if let Some(e) = legacy.get_opt(svc).await? {
        if e.labels()
            .get("endpoints.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("endpoint-controller")
        {
            match legacy.delete(svc, &DeleteParams::default()).await {
                Err(e) if !not_found(&e) => return Err(e.into()),
                _ => {}
            }
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    for manager in [
        "endpointslice-controller.k8s.io",
        "endpointslicemirroring-controller.k8s.io",
    ] {
        let theirs = ListParams::default().labels(&format!(
            "kubernetes.io/service-name={svc},endpointslice.kubernetes.io/managed-by={manager}"
        ));
        slices
            .delete_collection(&DeleteParams::default(), &theirs)
            .await?;
    }
    Ok(())
}

/// The pod IPs whose proxy answers `GET /readyz` with 200, asked all at once (a bounded number
/// in parallel).
async fn answering(mut ips: Vec<String>, timeout: Duration) -> HashSet<String> {
    let path = http::uri::PathAndQuery::from_static("/readyz");
    ips.truncate(endpoints::MAX_ENDPOINTS);
    stream::iter(ips)
        .map(|ip| {
            let check = probe::Check::new(&ip, PROXY_ADMIN_PORT, Some(path.clone()), None, timeout);
            async move { check.check().await.ok().map(|()| ip) }
        })
        .buffer_unordered(64)
        .filter_map(std::future::ready)
        .collect()
        .await
}

/// Deleting: KEDA lets go of the workload, the workload is not left at zero, and an adopted
/// Service gets its selector back. The owned objects then go with the HTTPAutoscaler.
async fn cleanup(hta: &HttpAutoscaler, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = hta.namespace().ok_or(Error::Incomplete("namespace"))?;
    let name = hta.name_any();
    let uid = hta.uid().unwrap_or_default();

    let scaled: Api<ScaledObject> = Api::namespaced(client.clone(), &ns);
    match scaled.get_opt(&name).await {
        Ok(Some(so)) if so.owner_references().iter().any(|o| o.uid == uid) => {
            if so.metadata.deletion_timestamp.is_none() {
                scaled.delete(&name, &DeleteParams::foreground()).await?;
            }
            // Scaling up while KEDA still holds the workload would race its last scale-down.
            return Err(Error::Waiting(format!(
                "KEDA is deleting ScaledObject {name}"
            )));
        }
        Err(e) if !not_found(&e) => return Err(e.into()),
        _ => {}
    }

    let at_least = hta.spec.min_replicas.max(1);
    if let Some(t) = target(client, &ns, hta).await? {
        if t.replicas == 0 {
            scale(client, &ns, hta, at_least).await?;
            publish(ctx, hta, EventType::Normal, "ScaledUpOnDelete", format!(
                "{} scaled from zero to {at_least}: nothing would wake it once this HTTPAutoscaler is gone",
                kind_name(hta)
            )).await;
            return Err(Error::Waiting(format!(
                "{} to have a ready pod",
                kind_name(hta)
            )));
        }
        // Give the Service back only once a pod can take its traffic, or once the activation
        // timeout has passed (a workload that never gets ready must not hold the delete forever).
        let deleting_for = hta
            .metadata
            .deletion_timestamp
            .as_ref()
            .map_or(Duration::ZERO, |t| {
                let secs = k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second();
                Duration::from_secs(u64::try_from(secs).unwrap_or(0))
            });
        let limit = inflight_api::parse_duration(&hta.spec.activation.timeout)
            .unwrap_or(Duration::from_secs(30));
        if t.ready == 0 && deleting_for < limit {
            return Err(Error::Waiting(format!(
                "{} to have a ready pod",
                kind_name(hta)
            )));
        }
    }

    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    if let Some(svc) = services.get_opt(&hta.spec.service.name).await? {
        let ours = svc.labels().get(inflight_api::AUTOSCALER_LABEL) == Some(&name);
        if let (true, Some(patch)) = (ours, services::restore_patch(&svc)) {
            services
                .patch(
                    &hta.spec.service.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            publish(
                ctx,
                hta,
                EventType::Normal,
                "ServiceRestored",
                format!("Service {} has its selector back", hta.spec.service.name),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}
